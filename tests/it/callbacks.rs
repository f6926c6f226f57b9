//! Webhook callbacks against real receivers on loopback: signed as CONTRACT
//! §5 and Standard Webhooks say (checked here with RustCrypto's HMAC, not
//! the ring code that signs), retried on 5xx with Retry-After honoured,
//! never retried on 4xx, refused for private addresses unless an operator
//! allowed them, and resumed by another worker when one dies mid-send.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::support::cluster::Cluster;
use crate::support::process::{Served, free_port};
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const SECRET: &str = "receiver-shared-secret";

/// Loopback receivers need http and their network allowed.
const LOCAL_RECEIVERS: [(&str, &str); 4] = [
    ("DEDUP2D_CALLBACK_HMAC_SECRET", SECRET),
    ("DEDUP2D_CALLBACK_ALLOW_HTTP", "1"),
    ("DEDUP2D_CALLBACK_ALLOWED_CIDRS", "127.0.0.0/8"),
    ("DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS", "0.05"),
];

async fn submit(server: &TestServer, callback_url: &str) -> (u16, Value) {
    let encoded: String = form_urlencoded::byte_serialize(callback_url.as_bytes()).collect();
    server
        .post(&format!("/search?callback_url={encoded}"), Some(form(png(1), "q.png")))
        .await
}

async fn job_with_callback(server: &TestServer, callback_url: &str) -> String {
    let (status, body) = submit(server, callback_url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "pending", "a callback makes the search a job: {body}");
    body["job_id"].as_str().unwrap().to_string()
}

/// Polls until the job's callback ended (bounded).
async fn callback_ended(server: &TestServer, job_id: &str) -> Value {
    for _ in 0..600 {
        let (_, job) = server.get(&format!("/jobs/{job_id}")).await;
        if matches!(job["callback_status"].as_str(), Some("success" | "failed" | "skipped")) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the callback of {job_id} never ended");
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[tokio::test]
async fn a_finished_job_posts_one_signed_callback_that_verifies() {
    let receiver = Receiver::start(vec![]).await;
    let server = TestServer::start(&LOCAL_RECEIVERS).await;
    let job_id = job_with_callback(&server, &receiver.url("/hook?from=dedup2d")).await;
    let job = callback_ended(&server, &job_id).await;
    assert_eq!(job["callback_status"], "success", "{job}");
    assert_eq!(job["callback_attempts"], 1);
    assert_eq!(job["callback_http_status"], 200);
    assert!(job["callback_finished_at"].as_f64().is_some());

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let hook = &got[0];
    assert_eq!(hook.path, "/hook");
    let header = |name: &str| hook.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("x-dedup-job-id"), job_id);
    assert_eq!(header("x-dedup-tenant-id"), dedup2d::api::LOCAL_TENANT);
    assert_eq!(header("x-dedup-signature-version"), "v1");

    // CONTRACT §5: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<job_id>." + body)>.
    let signature = header("x-dedup-signature");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("{signature}"));
    let mut signed = format!("{t}.{job_id}.").into_bytes();
    signed.extend_from_slice(&hook.body);
    let expected: String = hmac_sha256(SECRET.as_bytes(), &signed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected);

    // Standard Webhooks: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>.
    assert_eq!(header("webhook-id"), job_id);
    assert_eq!(header("webhook-timestamp"), t);
    let mut standard = format!("{job_id}.{t}.").into_bytes();
    standard.extend_from_slice(&hook.body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(SECRET.as_bytes(), &standard));
    assert_eq!(header("webhook-signature"), format!("v1,{b64}"));

    // Compact, keys sorted, the job as GET shows it.
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "error",
            "finished_at",
            "job_id",
            "result",
            "started_at",
            "status",
            "tenant_id"
        ]
    );
    assert!(!String::from_utf8_lossy(&hook.body).contains(": "));
    assert_eq!(body["status"], "completed");
    assert_eq!(body["result"], job["result"]);
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after_and_then_succeeds() {
    let receiver = Receiver::start(vec![
        Reply {
            retry_after: Some("1"),
            ..Reply::status(503)
        },
        Reply::status(502),
    ])
    .await;
    let server = TestServer::start(&LOCAL_RECEIVERS).await;
    let job_id = job_with_callback(&server, &receiver.url("/hook")).await;
    let job = callback_ended(&server, &job_id).await;
    assert_eq!(
        (
            &job["callback_status"],
            &job["callback_attempts"],
            &job["callback_http_status"]
        ),
        (&Value::from("success"), &Value::from(3), &Value::from(200)),
        "{job}"
    );
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "Retry-After: 1 was not waited for: {:?}",
        got[1].at - got[0].at
    );
    assert_eq!(got[0].body, got[2].body, "a retry sends the same bytes");
}

#[tokio::test]
async fn a_receiver_that_refuses_or_redirects_is_not_asked_again() {
    let server = TestServer::start(&LOCAL_RECEIVERS).await;
    for status in [410, 400, 302] {
        let receiver = Receiver::start(vec![Reply::status(status)]).await;
        let job_id = job_with_callback(&server, &receiver.url("/hook")).await;
        let job = callback_ended(&server, &job_id).await;
        assert_eq!(job["callback_status"], "failed", "{job}");
        assert_eq!(job["callback_http_status"], status);
        let error = job["callback_last_error"].as_str().unwrap();
        assert!(error.starts_with(&format!("HTTP {status}")), "{error}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.received().len(), 1, "{status} was retried");
    }
}

#[tokio::test]
async fn private_addresses_are_refused_at_submit_and_at_send() {
    let receiver = Receiver::start(vec![]).await;
    // A process of its own, so its blocked count is only this test's.
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), free_port(), &[("DEDUP2D_CALLBACK_ALLOW_HTTP", "1")]).await;
    let server = TestServer::attach(&served.base, dir.path());
    let port = receiver.port;
    let refused_at_submit = [
        format!("http://127.0.0.1:{port}/hook"),
        "http://10.1.2.3/hook".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ];
    for url in &refused_at_submit {
        let (status, body) = submit(&server, url).await;
        assert_eq!(
            (status, body["detail"]["reason"].as_str()),
            (400, Some("private_network")),
            "{url}"
        );
    }
    // A name is checked on the address dialled: accepted, then refused.
    let job_id = job_with_callback(&server, &format!("http://localhost:{port}/hook")).await;
    let job = callback_ended(&server, &job_id).await;
    assert_eq!(job["callback_status"], "failed", "{job}");
    assert!(
        job["callback_last_error"].as_str().unwrap().starts_with("blocked:"),
        "{job}"
    );
    assert!(receiver.received().is_empty());
    let blocked = served
        .metric("dedup2d_callback_blocked_total{reason=\"private_network\"}")
        .await;
    assert_eq!(blocked, (refused_at_submit.len() + 1) as f64);

    // Resolving at submit refuses the name at once; an allowed network passes.
    let resolving = TestServer::start(&[
        ("DEDUP2D_CALLBACK_ALLOW_HTTP", "1"),
        ("DEDUP2D_CALLBACK_RESOLVE_DNS", "1"),
    ])
    .await;
    let (status, body) = submit(&resolving, &format!("http://localhost:{port}/hook")).await;
    assert_eq!(
        (status, body["detail"]["reason"].as_str()),
        (400, Some("private_network"))
    );
    let allowed = TestServer::start(&LOCAL_RECEIVERS).await;
    let job_id = job_with_callback(&allowed, &format!("http://127.0.0.1:{port}/hook")).await;
    assert_eq!(callback_ended(&allowed, &job_id).await["callback_status"], "success");
}

#[tokio::test]
async fn a_job_canceled_before_it_ran_skips_its_callback_and_a_running_one_reports() {
    let receiver = Receiver::start(vec![]).await;
    let mut env = LOCAL_RECEIVERS.to_vec();
    env.extend([
        ("DEDUP2D_ASYNC_MAX_CONCURRENCY", "1"),
        ("DEDUP2D_JOB_DELAY_MS", "60000"),
    ]);
    let server = TestServer::start(&env).await;
    let running = job_with_callback(&server, &receiver.url("/running")).await;
    let pending = job_with_callback(&server, &receiver.url("/pending")).await;
    server.wait_status(&running, &["in_progress"]).await;
    let (_, before) = server.get(&format!("/jobs/{pending}")).await;
    assert_eq!(before["callback_status"], "pending");
    for job in [&pending, &running] {
        server.post(&format!("/jobs/{job}/cancel"), None).await;
    }
    let skipped = callback_ended(&server, &pending).await;
    assert_eq!(skipped["callback_status"], "skipped");
    assert_eq!(skipped["callback_last_error"], "canceled_before_start");
    let reported = callback_ended(&server, &running).await;
    assert_eq!(reported["callback_status"], "success", "{reported}");
    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/running");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["status"], "canceled");
}

#[tokio::test]
async fn a_callback_whose_worker_died_mid_send_is_sent_by_another() {
    let cluster = Cluster::start().await;
    // The first POST hangs until its worker is gone; the second is answered.
    let receiver = Receiver::start(vec![Reply {
        delay: Duration::from_secs(30),
        ..Reply::status(200)
    }])
    .await;
    let mut env = LOCAL_RECEIVERS.to_vec();
    env.push(("DEDUP2D_CALLBACK_TIMEOUT_SECONDS", "2"));
    let api = cluster.api(&env).await;
    let mut first = cluster.worker(&env).await;
    let job_id = job_with_callback(&api, &receiver.url("/hook")).await;
    receiver.wait_for(1).await;
    first.kill_9();
    let (_, job) = api.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["callback_status"].as_str()),
        (Some("completed"), Some("pending"))
    );

    let _second = cluster.worker(&env).await;
    let job = callback_ended(&api, &job_id).await;
    assert_eq!(job["callback_status"], "success", "{job}");
    let got = receiver.received();
    assert_eq!(got.len(), 2, "sent again once the dead worker's hold ran out");
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
}

#[tokio::test]
async fn on_redis_refusals_fail_and_cancels_skip_or_report() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(vec![Reply::status(410)]).await;
    let mut env = LOCAL_RECEIVERS.to_vec();
    env.push(("DEDUP2D_JOB_DELAY_MS", "1500"));
    let api = cluster.api(&env).await;
    let _worker = cluster
        .worker(&[env.as_slice(), &[("DEDUP2D_WORKER_MAX_JOBS", "1")]].concat())
        .await;

    let refused = job_with_callback(&api, &receiver.url("/refused")).await;
    api.wait_status(&refused, &["in_progress"]).await;
    let pending = job_with_callback(&api, &receiver.url("/pending")).await;
    api.post(&format!("/jobs/{pending}/cancel"), None).await;
    let job = callback_ended(&api, &refused).await;
    assert_eq!(
        (job["callback_status"].as_str(), job["callback_http_status"].as_u64()),
        (Some("failed"), Some(410)),
        "{job}"
    );
    let skipped = callback_ended(&api, &pending).await;
    assert_eq!(skipped["callback_last_error"], "canceled_before_start", "{skipped}");

    let running = job_with_callback(&api, &receiver.url("/running")).await;
    api.wait_status(&running, &["in_progress"]).await;
    api.post(&format!("/jobs/{running}/cancel"), None).await;
    let reported = callback_ended(&api, &running).await;
    assert_eq!(reported["callback_status"], "success", "{reported}");
    let paths: Vec<String> = receiver.wait_for(2).await.into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/refused", "/running"]);
}

#[tokio::test]
async fn an_embedded_server_killed_mid_send_sends_the_callback_after_its_restart() {
    let receiver = Receiver::start(vec![Reply {
        delay: Duration::from_secs(30),
        ..Reply::status(200)
    }])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = LOCAL_RECEIVERS.to_vec();
    env.push(("DEDUP2D_CALLBACK_TIMEOUT_SECONDS", "2"));
    let mut first = Served::start(dir.path(), free_port(), &env).await;
    let server = TestServer::attach(&first.base, dir.path());
    let job_id = job_with_callback(&server, &receiver.url("/hook")).await;
    receiver.wait_for(1).await;
    first.kill_9();

    let second = Served::start(dir.path(), free_port(), &env).await;
    let server = TestServer::attach(&second.base, dir.path());
    let job = callback_ended(&server, &job_id).await;
    assert_eq!(
        (job["status"].as_str(), job["callback_status"].as_str()),
        (Some("completed"), Some("success"))
    );
    assert_eq!(receiver.received().len(), 2);
}
