//! The distributed mode end to end: `serve` on Redis, `dedup2d work`
//! processes, a real redis-server. Workers are real processes, so they can
//! be killed, paused and signalled as production kills them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures_util::future::join_all;

use crate::support::cluster::Cluster;
use crate::support::process::run;
use crate::support::*;

const COMPLETED: &str = "dedup2d_jobs_total{status=\"completed\"}";

#[tokio::test]
async fn a_killed_worker_s_job_completes_once_on_another_worker() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let slow = [("DEDUP2D_JOB_DELAY_MS", "60000"), ("DEDUP2D_LEASE_SECONDS", "2")];
    let mut doomed = cluster.worker(&slow).await;
    let job = api.submit(png(1)).await;
    api.wait_status(&job, &["in_progress"]).await;
    doomed.kill_9();

    let rescuer = cluster.worker(&[]).await;
    let done = api.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(rescuer.metric(COMPLETED).await, 1.0);
    assert_eq!(rescuer.metric("dedup2d_lease_reclaims_total").await, 1.0);
    assert_eq!(cluster.active().await, 0);
}

#[tokio::test]
async fn a_paused_worker_cannot_overwrite_the_run_that_replaced_it() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let zombie = cluster
        .worker(&[("DEDUP2D_JOB_DELAY_MS", "3000"), ("DEDUP2D_LEASE_SECONDS", "2")])
        .await;
    let job = api.submit(png(1)).await;
    let first = api.wait_status(&job, &["in_progress"]).await;
    zombie.signal("STOP");

    // The rescuer is still running its attempt when the zombie wakes, so
    // only the fencing token (not a finished status) can refuse the zombie.
    let rescuer = cluster.worker(&[("DEDUP2D_JOB_DELAY_MS", "6000")]).await;
    let mut rescued = first.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rescued["started_at"] == first["started_at"] || rescued["status"] != "in_progress" {
        assert!(Instant::now() < deadline, "no worker took over the job: {rescued}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        rescued = api.get(&format!("/jobs/{job}")).await.1;
    }
    zombie.signal("CONT");
    // Its sleep is over: it finishes at once or learns at its next heartbeat
    // that it lost the job, and either way writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, meanwhile) = api.get(&format!("/jobs/{job}")).await;
    assert_eq!(meanwhile, rescued, "the zombie's late write changed the job");
    let done = api.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(zombie.metric(COMPLETED).await, 0.0);
    assert_eq!(rescuer.metric(COMPLETED).await, 1.0);
}

#[tokio::test]
async fn cancel_stops_a_running_job_on_another_process_within_a_second() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let _worker = cluster
        .worker(&[("DEDUP2D_JOB_DELAY_MS", "60000"), ("DEDUP2D_WORKER_MAX_JOBS", "1")])
        .await;
    let running = api.submit(png(1)).await;
    api.wait_status(&running, &["in_progress"]).await;
    let pending = api.submit(png(2)).await;
    let (_, body) = api.post(&format!("/jobs/{pending}/cancel"), None).await;
    assert_eq!(body["canceled"], true);

    let next = api.submit(png(3)).await;
    let (_, body) = api.post(&format!("/jobs/{running}/cancel"), None).await;
    assert_eq!(body["canceled"], true);
    let asked = Instant::now();
    // The worker's only slot was busy for a minute; it frees when the run
    // stops, which takes one heartbeat (500 ms) plus a claim. The bound
    // leaves room for a loaded test machine, far below the minute.
    api.wait_status(&next, &["in_progress"]).await;
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "the canceled run held its slot for {:?}",
        asked.elapsed()
    );
    for job in [&running, &pending] {
        let (_, now) = api.get(&format!("/jobs/{job}")).await;
        assert_eq!(now["status"], "canceled");
    }
}

#[tokio::test]
async fn a_job_past_its_timeout_fails_with_timeout_and_frees_its_capacity() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let _worker = cluster
        .worker(&[
            ("DEDUP2D_JOB_DELAY_MS", "30000"),
            ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "1"),
        ])
        .await;
    let job = api.submit(png(1)).await;
    let done = api.wait_terminal(&job).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"], "timeout");
    assert_eq!(cluster.active().await, 0);
}

#[tokio::test]
async fn sigterm_hands_back_what_the_grace_period_could_not_finish() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let mut leaving = cluster
        .worker(&[
            ("DEDUP2D_JOB_DELAY_MS", "60000"),
            ("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", "1"),
            ("DEDUP2D_LEASE_SECONDS", "600"),
        ])
        .await;
    let job = api.submit(png(1)).await;
    api.wait_status(&job, &["in_progress"]).await;
    leaving.terminate();
    assert_eq!(leaving.exit_code(Duration::from_secs(10)).await, Some(0));
    let (_, back) = api.get(&format!("/jobs/{job}")).await;
    assert_eq!(back["status"], "pending", "{back}");

    // Handed back, not left to a ten-minute lease: the next worker runs it now.
    let _next = cluster.worker(&[]).await;
    let done = api.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed");
}

#[tokio::test]
async fn work_once_runs_what_is_queued_and_exits() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let mut jobs = Vec::new();
    for seed in 0..5 {
        jobs.push(api.submit(png(seed)).await);
    }
    let url = cluster.redis.url();
    let data_dir = cluster.data_dir.display().to_string();
    let env = [
        ("DEDUP2D_ASYNC_BACKEND", "redis"),
        ("DEDUP2D_REDIS_URL", url.as_str()),
        ("DEDUP2D_DATA_DIR", data_dir.as_str()),
        ("DEDUP2D_LOG", "warn"),
    ];
    let port = format!("127.0.0.1:{}", process::free_port());
    let out = run(&["work", "--once", "--metrics-listen", &port], &env, &cluster.data_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for job in jobs {
        let (_, done) = api.get(&format!("/jobs/{job}")).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
}

#[tokio::test]
async fn jobs_accepted_before_a_redis_restart_all_finish() {
    let mut cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let worker = cluster
        .worker(&[("DEDUP2D_JOB_DELAY_MS", "300"), ("DEDUP2D_WORKER_MAX_JOBS", "2")])
        .await;
    let mut jobs = Vec::new();
    for seed in 0..20 {
        jobs.push(api.submit(png(seed)).await);
    }
    api.wait_terminal(&jobs[0]).await;
    cluster.redis.restart(Duration::from_secs(1)).await;
    for job in &jobs {
        let done = api.wait_terminal(job).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    assert_eq!(worker.metric(COMPLETED).await, 20.0);
    assert_eq!(cluster.active().await, 0);
}

#[tokio::test]
async fn ready_reports_redis_down_and_warns_of_an_evicting_policy() {
    let mut cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let cli = cluster.redis_cli().await;
    let _: String = cli
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["SET", "maxmemory-policy", "allkeys-lru"],
        )
        .await
        .unwrap();
    let ready = api.root_json("/ready").await;
    assert_eq!(ready["ready"], true);
    assert!(
        ready["warnings"][0].as_str().unwrap().contains("allkeys-lru"),
        "{ready}"
    );

    cluster.redis.kill();
    let response = api.client.get(api.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let ready: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], false, "{ready}");
    cluster.redis.resume().await;
    eventually_async("ready again once Redis is back", || async {
        api.client
            .get(api.url("/ready"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test]
async fn two_apis_and_three_workers_finish_2000_jobs_once_each() {
    const JOBS: usize = 2000;
    let cluster = Cluster::start().await;
    let limits = [("DEDUP2D_ASYNC_MAX_JOBS", "10000")];
    let (_a, api_a) = cluster.api_process(&limits).await;
    let (_b, api_b) = cluster.api_process(&limits).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(cluster.worker(&[("DEDUP2D_WORKER_MAX_JOBS", "4")]).await);
    }
    let query = png(7);
    let mut ids = Vec::new();
    for batch in 0..JOBS / 50 {
        let api = if batch % 2 == 0 { &api_a } else { &api_b };
        ids.extend(join_all((0..50).map(|_| api.submit(query.clone()))).await);
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), JOBS);

    let deadline = Instant::now() + Duration::from_secs(300);
    while cluster.active().await > 0 {
        assert!(Instant::now() < deadline, "jobs still active after 5 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cli = cluster.redis_cli().await;
    for id in &ids {
        let status: Option<String> = cli.hget(format!("dedup2d:job:{id}"), "status").await.unwrap();
        assert_eq!(status.as_deref(), Some("completed"), "job {id}");
        let result: bool = cli.exists(format!("dedup2d:result:{id}")).await.unwrap();
        assert!(result, "job {id} has no result");
    }
    let mut completions = 0.0;
    for worker in &workers {
        completions += worker.metric(COMPLETED).await;
    }
    assert_eq!(
        completions, JOBS as f64,
        "one completion per job, summed over the workers"
    );
}

/// Waits (bounded) for an async condition.
async fn eventually_async<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_drawing_added_through_one_api_is_found_by_every_worker_within_a_second() {
    let cluster = Cluster::start().await;
    let api_a = cluster.api(&[]).await;
    let (_b, api_b) = cluster.api_process(&[]).await;
    // One job at a time, slow enough that both workers take some.
    let slow_single = [("DEDUP2D_WORKER_MAX_JOBS", "1"), ("DEDUP2D_JOB_DELAY_MS", "300")];
    let workers = [cluster.worker(&slow_single).await, cluster.worker(&slow_single).await];
    let searches = || join_all((0..4).map(|_| async { api_b.wait_terminal(&api_b.submit(png(1)).await).await }));
    // Every process has loaded the (empty) library before the add, so what
    // follows is each one following the change feed, not a first load.
    for before in searches().await {
        assert_eq!(before["result"]["total_matches"], 0, "{before}");
    }
    for worker in &workers {
        assert!(worker.metric(COMPLETED).await >= 1.0, "a worker ran no search");
    }
    let (status, _) = api_b.post("/search", Some(form(png(1), "q.png"))).await;
    assert_eq!(status, 200);

    let drawing = api_a.add(png(1), "part.png").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let completed_before = [workers[0].metric(COMPLETED).await, workers[1].metric(COMPLETED).await];
    for found in searches().await {
        assert_eq!(found["result"]["duplicates"][0]["drawing_id"], drawing, "{found}");
    }
    for (worker, before) in workers.iter().zip(completed_before) {
        assert!(
            worker.metric(COMPLETED).await > before,
            "a worker ran none of the searches"
        );
    }
    let (_, sync) = api_b.post("/search", Some(form(png(1), "q.png"))).await;
    assert_eq!(sync["duplicates"][0]["drawing_id"], drawing, "{sync}");

    let (status, _) = api_b.delete_as(&format!("/index/{drawing}"), None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for gone in searches().await {
        assert_eq!(gone["result"]["total_matches"], 0, "{gone}");
    }
    let (_, sync) = api_a.post("/search", Some(form(png(1), "q.png"))).await;
    assert_eq!(sync["total_matches"], 0, "{sync}");
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_workers_is_dead_lettered_and_can_be_replayed() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let mut doomed = cluster
        .worker(&[("DEDUP2D_JOB_DELAY_MS", "60000"), ("DEDUP2D_LEASE_SECONDS", "2")])
        .await;
    let job = api.submit(png(1)).await;
    api.wait_status(&job, &["in_progress"]).await;
    doomed.kill_9();

    let strict = cluster.worker(&[("DEDUP2D_MAX_DELIVERIES", "1")]).await;
    let failed = api.wait_terminal(&job).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("deliveries"), "{failed}");
    assert_eq!(strict.metric("dedup2d_jobs_dead_lettered_total").await, 1.0);
    assert_eq!(cluster.active().await, 0);

    let url = cluster.redis.url();
    let env = [("DEDUP2D_ASYNC_BACKEND", "redis"), ("DEDUP2D_REDIS_URL", url.as_str())];
    let listed = run(&["work", "--list-dead"], &env, &cluster.data_dir);
    assert!(listed.status.success());
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), job);
    let replayed = run(&["work", "--requeue-dead"], &env, &cluster.data_dir);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&replayed.stdout).trim(), job);

    let done = api.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed", "{done}");
    let listed = run(&["work", "--list-dead"], &env, &cluster.data_dir);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "");
}

#[tokio::test]
async fn a_worker_serves_health_and_the_queue_metrics_on_its_own_address() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let worker = cluster.worker(&[("DEDUP2D_JOB_DELAY_MS", "60000")]).await;
    let job = api.submit(png(1)).await;
    api.wait_status(&job, &["in_progress"]).await;
    let http = reqwest::Client::new();
    assert_eq!(worker.json("/health").await["status"], "healthy");
    let search = http.get(format!("{}{PREFIX}/jobs", worker.base)).send().await.unwrap();
    assert_eq!(search.status(), 404, "a worker's metrics address serves no API");

    eventually_async("the worker's gauges see the running job", || async {
        worker.metric("dedup2d_jobs_active").await == 1.0
    })
    .await;
    assert_eq!(worker.metric("dedup2d_job_queue_depth").await, 1.0);
    assert!(worker.metric("dedup2d_redis_rtt_seconds").await > 0.0);
    let text = http
        .get(format!("{}/metrics", worker.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "dedup2d_jobs_queued ",
        "dedup2d_lease_reclaims_total ",
        "dedup2d_jobs_dead_lettered_total ",
        "dedup2d_jobs_dead_letter ",
        "dedup2d_job_retries_total ",
        "dedup2d_jobs_total{status=\"completed\"} ",
    ] {
        assert!(text.contains(name), "{name} missing from the worker's /metrics");
    }
}
