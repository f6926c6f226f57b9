//! The Redis job store against a real `redis-server`: exact admission from
//! several clients, leases and fencing, dead letters, cancel, and jobs that
//! outlive a Redis restart. Time is passed in, so a lease runs out when the
//! test says so.

use std::time::Duration;

use dedup2d::engine::SearchParams;
use dedup2d::jobs::{
    CancelOutcome, Claim, Claimed, Delivery, JobError, JobStore, Lease, NewJob, Outcome, Payload, Status,
};
use dedup2d::queue::{Keys, Redis, RedisJobs, Timing};
use dedup2d::store::FileRef;
use fred::prelude::SetsInterface;

use crate::support::redis::RedisServer;

const LEASE: f64 = 30.0;

async fn jobs(redis: &RedisServer) -> RedisJobs {
    jobs_living(redis, 3600).await
}

async fn jobs_living(redis: &RedisServer, ttl_seconds: u64) -> RedisJobs {
    let timing = Timing {
        lease_seconds: LEASE,
        ttl_seconds,
    };
    Redis::connect(&redis.url())
        .await
        .expect("connect to the test redis")
        .jobs(Keys::new("dedup2d", "dedup2d:queue"), timing)
}

fn new_job(id: &str, tenant: &str, created_at: f64) -> NewJob {
    NewJob {
        job_id: id.to_string(),
        created_at,
        payload: Payload {
            tenant_id: tenant.to_string(),
            file_name: format!("{id}.png"),
            content_type: "image/png".into(),
            file_ref: Some(FileRef::Local {
                path: format!("uploads/{id}"),
            }),
            file_bytes_b64: None,
            request_params: SearchParams::default(),
            callback_url: None,
            geom_json: None,
        },
    }
}

async fn claim(store: &RedisJobs, now: f64) -> Claimed {
    match store.claim(now, 5).await.expect("claim") {
        Claim::Run(job) => job,
        other => panic!("expected a job to run, got {other:?}"),
    }
}

fn done(value: u32) -> Outcome {
    Outcome::Completed(serde_json::json!({ "by": value }))
}

#[tokio::test]
async fn admission_is_exact_when_two_api_processes_submit_at_once() {
    let redis = RedisServer::start().await;
    let (a, b) = (jobs(&redis).await, jobs(&redis).await);
    let submits = (0..60).map(|i| {
        let store = if i % 2 == 0 { &a } else { &b };
        store.admit(new_job(&format!("j{i:02}"), "t", f64::from(i)), 25)
    });
    let results = futures_util::future::join_all(submits).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(JobError::QueueFull { max: 25, current: 25 })))
        .count();
    assert_eq!((admitted, full), (25, 35));
    assert_eq!(a.counts().await.unwrap().pending, 25);
    let (listed, total) = a.list("t", Some(Status::Pending), 10).await.unwrap();
    assert_eq!((listed.len(), total), (10, 25));
    assert!(
        listed.windows(2).all(|w| w[0].created_at > w[1].created_at),
        "newest first"
    );
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_overwrite_the_result() {
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    store.admit(new_job("j", "t", 1.0), 10).await.unwrap();
    let zombie = claim(&store, 100.0).await;
    assert_eq!(zombie.attempt, 1);
    assert_eq!(store.heartbeat(&zombie, 110.0).await.unwrap(), Lease::Held);
    // Its worker stops heartbeating; after the lease another worker takes over.
    let replacement = claim(&store, 110.0 + LEASE + 1.0).await;
    assert_eq!((replacement.job_id.as_str(), replacement.attempt), ("j", 2));
    assert_eq!(store.heartbeat(&zombie, 150.0).await.unwrap(), Lease::Lost);
    assert!(
        !store.finish(&zombie, done(1), 150.0).await.unwrap(),
        "the zombie's late write"
    );
    assert!(store.finish(&replacement, done(2), 151.0).await.unwrap());
    assert!(!store.finish(&zombie, done(1), 152.0).await.unwrap());
    let job = store.get("j").await.unwrap().expect("job");
    assert_eq!(job.status, Status::Completed);
    assert_eq!(job.result, Some(serde_json::json!({ "by": 2 })));
    assert_eq!(store.counts().await.unwrap(), Default::default());
    assert!(matches!(store.claim(200.0, 5).await.unwrap(), Claim::Empty));
}

#[tokio::test]
async fn upkeep_returns_a_dead_worker_s_job_to_the_queue_while_nobody_claims() {
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    store.admit(new_job("j", "t", 1.0), 10).await.unwrap();
    let orphan = claim(&store, 100.0).await;
    store.expire(100.0 + LEASE - 1.0).await.unwrap();
    assert_eq!(store.get("j").await.unwrap().unwrap().status, Status::InProgress);
    store.expire(100.0 + LEASE + 1.0).await.unwrap();
    let job = store.get("j").await.unwrap().unwrap();
    assert_eq!((job.status, job.started_at), (Status::Pending, None));
    assert_eq!(store.heartbeat(&orphan, 200.0).await.unwrap(), Lease::Lost);
    assert_eq!(claim(&store, 201.0).await.attempt, 2);
}

#[tokio::test]
async fn a_job_delivered_too_often_ends_failed_on_the_dead_letter_list_until_replayed() {
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    store.admit(new_job("crashy", "t", 1.0), 1).await.unwrap();
    let mut now = 10.0;
    for attempt in 1..=2 {
        assert_eq!(claim_max(&store, now, 2).await, Some(attempt));
        now += LEASE + 1.0; // each worker dies mid-job
    }
    // Or the second one only froze: it must stay fenced off after a replay.
    let frozen = claimed("crashy", 2);
    match store.claim(now, 2).await.unwrap() {
        Claim::Failed { job_id, error, .. } => {
            assert_eq!(job_id, "crashy");
            assert!(error.contains("2 deliveries"), "{error}");
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
    assert_eq!(store.dead_letters().await.unwrap(), ["crashy"]);
    assert_eq!(store.get("crashy").await.unwrap().unwrap().status, Status::Failed);
    // Its capacity is free again.
    store.admit(new_job("next", "t", 2.0), 1).await.unwrap();
    let next = claim(&store, now).await;
    assert!(store.finish(&next, done(0), now).await.unwrap());
    // An operator replays it once whatever killed its workers is fixed.
    assert_eq!(store.requeue_dead().await.unwrap(), ["crashy"]);
    assert!(store.dead_letters().await.unwrap().is_empty());
    let replayed = claim_max(&store, now, 1).await;
    assert_eq!(replayed, Some(3), "deliveries start again, the fencing token does not");
    assert_eq!(store.heartbeat(&frozen, now).await.unwrap(), Lease::Lost);
    assert!(!store.finish(&frozen, done(2), now).await.unwrap());
    assert!(store.finish(&claimed("crashy", 3), done(3), now).await.unwrap());
    let job = store.get("crashy").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.result),
        (Status::Completed, Some(serde_json::json!({ "by": 3 })))
    );
}

/// A runner's hold on attempt `attempt` of a job made by [`new_job`].
fn claimed(id: &str, attempt: u32) -> Claimed {
    Claimed {
        job_id: id.to_string(),
        attempt,
        payload: new_job(id, "t", 1.0).payload,
        created_at: 1.0,
    }
}

async fn claim_max(store: &RedisJobs, now: f64, max: u32) -> Option<u32> {
    match store.claim(now, max).await.unwrap() {
        Claim::Run(job) => Some(job.attempt),
        _ => None,
    }
}

#[tokio::test]
async fn cancel_ends_a_pending_job_at_once_and_tells_a_running_one_to_stop() {
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    store.admit(new_job("running", "t", 1.0), 10).await.unwrap();
    store.admit(new_job("pending", "t", 2.0), 10).await.unwrap();
    let running = claim(&store, 5.0).await;
    assert_eq!(
        store.cancel("pending", "other", 6.0).await.unwrap(),
        CancelOutcome::Forbidden
    );
    assert_eq!(store.cancel("nope", "t", 6.0).await.unwrap(), CancelOutcome::NotFound);
    for (id, was) in [("pending", Status::Pending), ("running", Status::InProgress)] {
        match store.cancel(id, "t", 6.0).await.unwrap() {
            CancelOutcome::Canceled { was: before, file_ref } => {
                assert_eq!(before, was);
                assert!(file_ref.is_some());
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(
        matches!(store.claim(7.0, 5).await.unwrap(), Claim::Empty),
        "a canceled job never runs"
    );
    assert_eq!(store.heartbeat(&running, 7.0).await.unwrap(), Lease::Canceled);
    assert!(!store.finish(&running, done(1), 8.0).await.unwrap());
    assert_eq!(store.get("running").await.unwrap().unwrap().status, Status::Canceled);
    assert_eq!(
        store.cancel("running", "t", 9.0).await.unwrap(),
        CancelOutcome::AlreadyFinished(Status::Canceled)
    );
    assert_eq!(store.counts().await.unwrap(), Default::default());
}

#[tokio::test]
async fn a_handed_back_job_runs_next_without_counting_a_delivery() {
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    store.admit(new_job("first", "t", 1.0), 10).await.unwrap();
    store.admit(new_job("second", "t", 2.0), 10).await.unwrap();
    let first = claim(&store, 5.0).await;
    store.hand_back(&first, Delivery::Uncounted).await.unwrap();
    // One delivery allowed, and it was forgiven; the fencing token still grew.
    let again = match store.claim(6.0, 1).await.unwrap() {
        Claim::Run(job) => job,
        other => panic!("{other:?}"),
    };
    assert_eq!((again.job_id.as_str(), again.attempt), ("first", 2));
    assert!(!store.finish(&first, done(1), 7.0).await.unwrap());
}

#[tokio::test]
async fn a_job_lives_while_it_is_handled_and_one_left_to_expire_gives_its_capacity_back() {
    let redis = RedisServer::start().await;
    let store = jobs_living(&redis, 1).await;
    store.admit(new_job("long", "t", 1.0), 2).await.unwrap();
    let long = claim(&store, 2.0).await;
    store.admit(new_job("forgotten", "t", 3.0), 2).await.unwrap();
    // Both live past the one-second TTL; only the running one is refreshed.
    for beat in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            store.heartbeat(&long, 4.0 + f64::from(beat)).await.unwrap(),
            Lease::Held
        );
    }
    assert!(store.get("forgotten").await.unwrap().is_none(), "its keys expired");
    assert!(store.finish(&long, done(1), 10.0).await.unwrap());
    assert_eq!(store.get("long").await.unwrap().unwrap().status, Status::Completed);
    // The expired job's id holds no capacity once upkeep has looked.
    assert!(matches!(store.claim(11.0, 5).await.unwrap(), Claim::Empty));
    store.expire(11.0).await.unwrap();
    store.admit(new_job("a", "t", 12.0), 2).await.unwrap();
    store.admit(new_job("b", "t", 12.0), 2).await.unwrap();
}

#[tokio::test]
async fn upkeep_gives_back_capacity_held_by_a_job_that_no_longer_runs() {
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    let cli = redis.cli().await;
    // Leaked by hand: an id in `{p}:active` whose job is gone.
    let _: i64 = cli.sadd("dedup2d:active", "ghost").await.unwrap();
    assert!(matches!(
        store.admit(new_job("j", "t", 1.0), 1).await,
        Err(JobError::QueueFull { .. })
    ));
    store.expire(2.0).await.unwrap();
    store.admit(new_job("j", "t", 1.0), 1).await.unwrap();
}

#[tokio::test]
async fn a_resent_admit_or_finish_changes_nothing() {
    // fred resends a command whose connection dropped before its reply.
    let redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    store.admit(new_job("j", "t", 1.0), 1).await.unwrap();
    let running = claim(&store, 2.0).await;
    store
        .admit(new_job("j", "t", 1.0), 1)
        .await
        .expect("the same admission again");
    assert_eq!(store.get("j").await.unwrap().unwrap().status, Status::InProgress);
    assert!(matches!(store.claim(3.0, 5).await.unwrap(), Claim::Empty));
    assert!(store.finish(&running, done(1), 4.0).await.unwrap());
    assert!(
        store.finish(&running, done(1), 4.0).await.unwrap(),
        "the same outcome again"
    );
    assert_eq!(store.counts().await.unwrap(), Default::default());
}

#[tokio::test]
async fn jobs_accepted_before_a_redis_restart_all_finish_after_it() {
    let mut redis = RedisServer::start().await;
    let store = jobs(&redis).await;
    for i in 0..20 {
        store
            .admit(new_job(&format!("j{i}"), "t", f64::from(i)), 100)
            .await
            .unwrap();
    }
    let running = claim(&store, 50.0).await;
    redis.restart(Duration::from_millis(500)).await;
    // The client reconnects on its own; the running job's lease survived.
    let mut finished = 0;
    assert!(store.finish(&running, done(0), 51.0).await.unwrap());
    finished += 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.claim(52.0, 5).await {
            Ok(Claim::Run(job)) => {
                assert!(store.finish(&job, done(0), 53.0).await.unwrap());
                finished += 1;
            }
            Ok(Claim::Empty) => break,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "redis did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(finished, 20);
    let (completed, total) = store.list("t", Some(Status::Completed), 100).await.unwrap();
    assert_eq!((completed.len(), total), (20, 20));
}
