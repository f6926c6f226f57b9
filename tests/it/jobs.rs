//! The job lifecycle in embedded mode: cancel, timeout, shutdown hand-back,
//! restarts.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn cancel_answers_at_once_for_pending_running_and_finished_jobs() {
    let server = TestServer::start(&[
        ("DEDUP2D_ASYNC_MAX_CONCURRENCY", "1"),
        ("DEDUP2D_JOB_DELAY_MS", "60000"),
    ])
    .await;
    let running = server.submit(png(1)).await;
    let pending = server.submit(png(2)).await;
    server.wait_status(&running, &["in_progress"]).await;

    for job in [&pending, &running] {
        let asked = Instant::now();
        let (status, body) = server.post(&format!("/jobs/{job}/cancel"), None).await;
        assert!(asked.elapsed() < Duration::from_secs(5), "cancel blocked");
        assert_eq!(status, 200);
        assert_eq!(keys(&body), sorted(&["job_id", "tenant_id", "canceled"]));
        assert_eq!(body["canceled"], true);
        let (_, now) = server.get(&format!("/jobs/{job}")).await;
        assert_eq!(now["status"], "canceled");
        assert!(now["finished_at"].as_f64().is_some());
    }
    let (_, again) = server.post(&format!("/jobs/{running}/cancel"), None).await;
    assert_eq!(again["canceled"], false);

    // The runner slot is free again: a new job runs while the old one would still sleep.
    let next = server.submit(png(3)).await;
    server.wait_status(&next, &["in_progress"]).await;
    let (_, listed) = server.get("/jobs?status=canceled").await;
    assert_eq!(listed["total"], 2);
    eventually("canceled jobs' uploads are removed", || {
        files_under(&server.uploads_dir()).len() == 1
    })
    .await;
}

#[tokio::test]
async fn a_job_past_its_timeout_fails_with_timeout() {
    let server = TestServer::start(&[
        ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "1"),
        ("DEDUP2D_JOB_DELAY_MS", "30000"),
    ])
    .await;
    let job = server.submit(png(1)).await;
    let done = server.wait_terminal(&job).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"], "timeout");
    let (_, counts) = server.get("/jobs?status=in_progress").await;
    assert_eq!(counts["total"], 0);
}

#[tokio::test]
async fn shutdown_hands_running_jobs_back_and_a_restart_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = [
        ("DEDUP2D_JOB_DELAY_MS", "60000"),
        ("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let server = TestServer::start_in(&data, &slow).await;
    let drawing = server.add(png(9), "nine.png").await;
    let job = server.submit(png(9)).await;
    server.wait_status(&job, &["in_progress"]).await;
    let stopping = Instant::now();
    server.stop().await.expect("clean stop");
    assert!(stopping.elapsed() < Duration::from_secs(30));

    let server = TestServer::start_in(&data, &[]).await;
    let done = server.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["duplicates"][0]["drawing_id"],
        drawing.as_str(),
        "the library survived the restart"
    );
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight_and_refuses_new_connections() {
    let server = TestServer::start(&[]).await;
    let bytes = png(4);
    let part_head =
        "--XX\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\ncontent-type: image/png\r\n\r\n";
    let tail = "\r\n--XX--\r\n";
    let length = part_head.len() + bytes.len() + tail.len();
    let head = format!(
        "POST {PREFIX}/search?async=true HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: multipart/form-data; boundary=XX\r\ncontent-length: {length}\r\n\r\n{part_head}"
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&bytes[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.begin_stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "a stopping server accepts no new connections"
    );
    stream.write_all(&bytes[10..]).await.unwrap();
    stream.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"pending\""), "{answer}");
    server.join().await.expect("clean stop");
}

#[tokio::test]
async fn one_data_dir_serves_one_process() {
    let first = TestServer::start(&[]).await;
    let dir = first.data_dir.display().to_string();
    let config = dedup2d::config::Config::load(&dedup2d::config::Sources::from_env([(
        "DEDUP2D_DATA_DIR".to_string(),
        dir,
    )]))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = dedup2d::serve::run_on(listener, config, Default::default())
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("another dedup2d process"), "{error:#}");
}
