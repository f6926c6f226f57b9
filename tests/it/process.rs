//! The built binary: its command line, start-up refusals, kill -9 and SIGTERM.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::support::process::{Served, free_port, run};
use crate::support::*;

#[test]
fn help_lists_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--help"], &[], dir.path());
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "work", "gc", "migrate-payloads", "config"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
}

#[test]
fn subcommands_that_cannot_run_here_fail_with_one_line_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    for (args, why) in [
        (&["gc", "--dry-run"][..], "DEDUP2D_DATA_DIR"),
        (&["migrate-payloads"], "DEDUP2D_ASYNC_BACKEND=redis"),
    ] {
        let out = run(args, &[], dir.path());
        assert!(!out.status.success(), "{args:?} pretended to succeed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[test]
fn work_without_the_redis_backend_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["work"], &[], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("DEDUP2D_ASYNC_BACKEND=redis"), "{stderr}");
}

#[test]
fn config_shows_each_value_with_its_source_and_redacts_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/dedup2d.toml"),
        "async_max_jobs = 7\nlisten = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let env = [
        ("DEDUP2D_API_KEYS", "very-secret"),
        ("DEDUP2D_ASYNC_MAX_CONCURRENCY", "3"),
    ];
    let out = run(&["config", "--listen", "127.0.0.1:8123"], &env, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(
        shown.contains("api_keys = \"<1 redacted>\"  # env DEDUP2D_API_KEYS"),
        "{shown}"
    );
    assert!(
        shown.contains("async_max_jobs = \"7\"  # file config/dedup2d.toml"),
        "{shown}"
    );
    assert!(
        shown.contains("async_max_concurrency = \"3\"  # env DEDUP2D_ASYNC_MAX_CONCURRENCY"),
        "{shown}"
    );
    assert!(
        shown.contains("listen = \"127.0.0.1:8123\"  # flag --listen"),
        "{shown}"
    );
    assert!(shown.contains("data_dir = \"./data\"  # default"), "{shown}");
}

#[test]
fn a_bad_value_stops_start_up_naming_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["serve"], &[("DEDUP2D_MAX_UPLOAD_BYTES", "fifty")], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_upload_bytes") && stderr.contains("env DEDUP2D_MAX_UPLOAD_BYTES"),
        "{stderr}"
    );
    let out = run(&["--config", "missing.toml", "serve"], &[], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn without_keys_serve_refuses_a_non_loopback_address_before_touching_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["serve", "--listen", "0.0.0.0:0", "--data-dir", "fresh"],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEDUP2D_API_KEYS"), "{stderr}");
    assert!(!dir.path().join("fresh").exists(), "refused before opening any data");
}

/// Every job answered 200 before a kill -9 reaches a terminal status after
/// the restart, with its result readable; the library is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let busy = [
        ("DEDUP2D_ASYNC_MAX_JOBS", "100000"),
        ("DEDUP2D_ASYNC_MAX_CONCURRENCY", "1"),
        ("DEDUP2D_JOB_DELAY_MS", "20"),
    ];
    let mut served = Served::start(&data, port, &busy).await;
    let client = reqwest::Client::new();
    let library = [png(100), png(101), png(102)];
    for (i, bytes) in library.iter().enumerate() {
        let r = client
            .post(format!("{}{PREFIX}/index/add", served.base))
            .multipart(form(bytes.clone(), &format!("lib{i}.png")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let clients: Vec<_> = (0..8u32)
        .map(|c| {
            let (client, base, accepted) = (client.clone(), served.base.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut n = 0;
                // Keeps submitting past the kill: requests then fail, which is expected.
                while Instant::now() < stop_at + Duration::from_millis(500) {
                    let bytes = if n % 4 == 0 {
                        png(100 + c % 3)
                    } else {
                        png(1000 + c * 10_000 + n)
                    };
                    n += 1;
                    let sent = client
                        .post(format!("{base}{PREFIX}/search?async=true"))
                        .multipart(form(bytes, "burst.png"))
                        .send()
                        .await;
                    let Ok(response) = sent else { continue };
                    if response.status() != 200 {
                        continue;
                    }
                    if let Ok(body) = response.json::<serde_json::Value>().await {
                        accepted.lock().await.push(body["job_id"].as_str().unwrap().to_string());
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(stop_at.into()).await;
    served.kill_9();
    for c in clients {
        c.await.unwrap();
    }
    let accepted = accepted.lock().await.clone();
    assert!(accepted.len() >= 50, "the burst got only {} jobs in", accepted.len());

    let served = Served::start(&data, port, &[("DEDUP2D_ASYNC_MAX_JOBS", "100000")]).await;
    let mut seen = HashSet::new();
    for job_id in &accepted {
        let job = wait_terminal(&client, &served.base, None, job_id).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert!(job["result"]["duplicates"].is_array(), "{job}");
        seen.insert(job_id.clone());
    }
    assert_eq!(seen.len(), accepted.len());
    let library_now = served.json(&format!("{PREFIX}/index")).await;
    assert_eq!(library_now["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_the_running_job_runs_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let slow = [
        ("DEDUP2D_JOB_DELAY_MS", "60000"),
        ("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let mut served = Served::start(&data, port, &slow).await;
    let client = reqwest::Client::new();
    let response: serde_json::Value = client
        .post(format!("{}{PREFIX}/search?async=true", served.base))
        .multipart(form(png(1), "a.png"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = response["job_id"].as_str().unwrap().to_string();
    wait_status(&client, &served.base, None, &job_id, &["in_progress"]).await;
    served.terminate();
    assert_eq!(served.exit_code(Duration::from_secs(30)).await, Some(0));

    let served = Served::start(&data, port, &[]).await;
    let job = wait_terminal(&client, &served.base, None, &job_id).await;
    assert_eq!(job["status"], "completed", "{job}");
}
