//! Bad input and limits: each gets its status and stable code, and nothing
//! refused is stored.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends raw bytes and returns everything the server answers until it closes
/// (bounded).
async fn raw_exchange(server: &TestServer, parts: &[&[u8]], pause: Duration) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for part in parts {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn multipart_head(path: &str, length: Option<usize>) -> String {
    let length = length
        .map(|l| format!("content-length: {l}\r\n"))
        .unwrap_or_else(|| "transfer-encoding: chunked\r\n".into());
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: multipart/form-data; boundary=XX\r\n{length}\r\n"
    )
}

#[tokio::test]
async fn oversized_uploads_get_413_before_anything_is_stored() {
    let server = TestServer::start(&[("DEDUP2D_MAX_UPLOAD_BYTES", "1000")]).await;
    let big = vec![0x89u8; 5000];
    for route in ["/search?async=true", "/index/add"] {
        let (status, body) = server.post(route, Some(form(big.clone(), "big.png"))).await;
        assert_eq!(status, 413, "{route}: {body}");
        assert_eq!(body["detail"]["error"], "FILE_TOO_LARGE");
        assert_eq!(body["detail"]["max_upload_bytes"], 1000);
    }
    // Streamed without a length: the limit still holds mid-stream.
    let head = multipart_head(&format!("{PREFIX}/search?async=true"), None);
    let part = "--XX\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n";
    let chunk = format!("{:x}\r\n{}{}\r\n", part.len() + 3000, part, "x".repeat(3000));
    let answer = raw_exchange(
        &server,
        &[head.as_bytes(), chunk.as_bytes(), chunk.as_bytes()],
        Duration::ZERO,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("FILE_TOO_LARGE"), "{answer}");

    assert!(files_under(&server.uploads_dir()).is_empty());
    assert!(files_under(&server.data_dir.join("library")).is_empty());
    let (_, jobs) = server.get("/jobs").await;
    assert_eq!(jobs["total"], 0);
}

#[tokio::test]
async fn unreadable_files_are_named() {
    let server = TestServer::start(&[]).await;
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (vec![], 400, "EMPTY_FILE", "empty"),
        (b"just some text".to_vec(), 415, "UNSUPPORTED_FORMAT", "DXF"),
        (b"AC1032\0\0binary dwg".to_vec(), 415, "UNSUPPORTED_FORMAT", "DWG"),
        (png(1)[..40].to_vec(), 415, "UNREADABLE_DRAWING", "PNG"),
        (DXF.as_bytes()[..25].to_vec(), 415, "UNREADABLE_DRAWING", "EOF"),
    ];
    for route in ["/search", "/search?async=true", "/index/add"] {
        for (bytes, status, code, mentions) in &cases {
            let (got, body) = server.post(route, Some(form(bytes.clone(), "f.bin"))).await;
            assert_eq!(got, *status, "{route} {code}: {body}");
            assert_eq!(body["detail"]["error"], *code, "{route}: {body}");
            let message = body["detail"]["message"].as_str().unwrap();
            assert!(message.contains(mentions), "{route}: {message}");
        }
    }
    let (status, body) = server
        .post("/search", Some(reqwest::multipart::Form::new().text("other", "x")))
        .await;
    assert_eq!(
        (status, body["detail"]["error"].as_str()),
        (400, Some("INVALID_MULTIPART")),
        "{body}"
    );
    let (status, body) = server
        .post("/search", Some(reqwest::multipart::Form::new().text("geom_json", "{}")))
        .await;
    assert_eq!(
        (status, body["detail"]["error"].as_str()),
        (400, Some("MISSING_FILE")),
        "{body}"
    );
    let bad_geom = form(png(1), "a.png").text("geom_json", "{not json");
    let (status, body) = server.post("/search", Some(bad_geom)).await;
    assert_eq!(
        (status, body["detail"]["error"].as_str()),
        (400, Some("INVALID_GEOM_JSON")),
        "{body}"
    );
    let response = server
        .client
        .post(server.api("/search"))
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(files_under(&server.uploads_dir()).is_empty());
    assert!(files_under(&server.data_dir.join("library")).is_empty());
}

#[tokio::test]
async fn bad_query_values_name_the_parameter() {
    let server = TestServer::start(&[]).await;
    for (query, parameter) in [
        ("mode=turbo", "mode"),
        ("max_results=0", "max_results"),
        ("async=perhaps", "async"),
        ("similar_threshold=-1", "similar_threshold"),
        ("precision_top_n=x", "precision_top_n"),
    ] {
        let (status, body) = server
            .post(&format!("/search?{query}"), Some(form(png(1), "a.png")))
            .await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["detail"]["error"], "INVALID_PARAMETER", "{query}");
        assert_eq!(body["detail"]["parameter"], parameter, "{query}");
    }
    let (status, body) = server
        .post(
            "/search?duplicate_threshold=0.5&similar_threshold=0.9",
            Some(form(png(1), "a.png")),
        )
        .await;
    assert_eq!(
        (status, body["detail"]["error"].as_str()),
        (400, Some("INVALID_THRESHOLDS"))
    );
    for (url, reason) in [
        ("http://example.com/h", "scheme"),
        ("https://127.0.0.1/h", "private_network"),
        ("https://[::1]:8443/h", "private_network"),
        ("https://user:pw@example.com/h", "userinfo"),
        ("example.com/h", "invalid_url"),
    ] {
        let (status, body) = server
            .post(
                &format!("/search?async=true&callback_url={url}"),
                Some(form(png(1), "a.png")),
            )
            .await;
        assert_eq!(
            (
                status,
                body["detail"]["error"].as_str(),
                body["detail"]["reason"].as_str()
            ),
            (400, Some("CALLBACK_URL_INVALID"), Some(reason)),
            "{url}"
        );
    }
    let (status, body) = server.get("/jobs?status=done").await;
    assert_eq!(
        (status, body["detail"]["error"].as_str()),
        (400, Some("INVALID_STATUS_FILTER"))
    );
    for limit in ["0", "201", "many"] {
        let (status, body) = server.get(&format!("/jobs?limit={limit}")).await;
        assert_eq!(
            (status, body["detail"]["parameter"].as_str()),
            (400, Some("limit")),
            "{limit}"
        );
    }
    let (status, body) = server.get("/jobs/no-such-job").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"]["error"], "JOB_NOT_FOUND");
    assert_eq!(body["detail"]["job_id"], "no-such-job");
    let (status, body) = server.post("/jobs/no-such-job/cancel", None).await;
    assert_eq!((status, body["detail"]["error"].as_str()), (404, Some("JOB_NOT_FOUND")));
    let (status, _) = server.get("/search").await;
    assert_eq!(status, 405);
    let (status, _) = server.get("/nothing-here").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_stores_nothing() {
    let server = TestServer::start(&[
        ("DEDUP2D_ASYNC_MAX_JOBS", "2"),
        ("DEDUP2D_ASYNC_MAX_CONCURRENCY", "1"),
        ("DEDUP2D_JOB_DELAY_MS", "60000"),
    ])
    .await;
    server.submit(png(1)).await;
    server.submit(png(2)).await;
    let response = server
        .client
        .post(server.api("/search?async=true"))
        .multipart(form(png(3), "c.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["detail"]["error"], "JOB_QUEUE_FULL");
    assert_eq!(body["detail"]["max_jobs"], 2);
    assert_eq!(body["detail"]["current_jobs"], 2);
    assert_eq!(
        files_under(&server.uploads_dir()).len(),
        2,
        "the refused upload is not kept"
    );
    let (_, jobs) = server.get("/jobs").await;
    assert_eq!(jobs["total"], 2);
    let metrics = server.metrics().await;
    assert!(metrics.contains("dedup2d_queue_full_total"), "{metrics}");
}

#[tokio::test]
async fn slow_clients_cannot_hold_the_server() {
    let server = TestServer::start(&[
        ("DEDUP2D_HTTP_HEADER_TIMEOUT_SECONDS", "1"),
        ("DEDUP2D_HTTP_BODY_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    // Silence, a head that never ends, and idling after a request are all cut off.
    let answered = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n".as_slice();
    for (what, sent) in [
        ("a silent client", b"".as_slice()),
        (
            "a half-sent head",
            b"POST /api/v1/dedup/2d/search HTTP/1.1\r\nhost: x\r\n".as_slice(),
        ),
        ("an idle keep-alive connection", answered),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "{what} kept its connection open");
    }

    // A body that stalls gets 408.
    let head = multipart_head(&format!("{PREFIX}/search"), Some(10_000));
    let start = "--XX\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nabc";
    let answer = raw_exchange(&server, &[head.as_bytes(), start.as_bytes()], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");

    let (status, _) = server.get("/jobs").await;
    assert_eq!(status, 200, "the server still serves others");
}

#[tokio::test]
async fn connections_over_the_limit_get_503_not_silence() {
    let server = TestServer::start(&[("DEDUP2D_HTTP_MAX_CONNECTIONS", "2")]).await;
    let _held: Vec<TcpStream> = vec![
        TcpStream::connect(server.addr).await.unwrap(),
        TcpStream::connect(server.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_exchange(&server, &[b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("TOO_MANY_CONNECTIONS"), "{answer}");
    drop(_held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = server.client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
