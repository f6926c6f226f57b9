//! `DEDUP2D_ENGINE=vision` against a stub of the original's vision service
//! on loopback: its answer is returned as it is, sync and as a job; a
//! service that keeps failing opens the circuit (503 with Retry-After, no
//! calls), and trial calls close it again once it answers.

use std::time::Duration;

use serde_json::Value;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const ANSWER: &str = r#"{"success":true,"total_matches":1,"duplicates":[{"drawing_id":"from-vision","similarity":0.99,"verdict":"duplicate"}],"similar":[],"final_level":2,"timing":{"total_ms":3.0},"level_stats":{},"warnings":[],"error":null}"#;

fn answer() -> Reply {
    Reply {
        body: ANSWER,
        ..Reply::status(200)
    }
}

#[tokio::test]
async fn a_failing_vision_service_opens_the_circuit_and_a_recovered_one_closes_it() {
    let mut script = vec![Reply::status(503); 5];
    script.extend([answer(), answer(), answer()]);
    let vision = Receiver::start(script).await;
    let url = vision.url("");
    let server = TestServer::start(&[
        ("DEDUP2D_ENGINE", "vision"),
        ("DEDUPCAD_VISION_URL", url.as_str()),
        ("DEDUPCAD_VISION_RETRY_BASE_SECONDS", "0.01"),
        ("DEDUPCAD_VISION_CIRCUIT_RECOVERY_SECONDS", "1"),
    ])
    .await;
    let search = || server.post("/search?mode=fast&max_results=7", Some(form(png(1), "q.png")));

    // Two searches of two calls each, then the fifth failure opens it and
    // the third search's retry is refused without a call.
    for _ in 0..3 {
        let (status, body) = search().await;
        assert_eq!(
            (status, body["detail"]["backend"].as_str()),
            (503, Some("vision")),
            "{body}"
        );
    }
    assert_eq!(vision.received().len(), 5);
    let open = server
        .client
        .post(server.api("/search"))
        .multipart(form(png(1), "q.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 503);
    let retry_after: u64 = open.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    assert_eq!(vision.received().len(), 5, "an open circuit calls nobody");
    assert!(server.metrics().await.contains("dedupcad_vision_circuit_state 1"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let (status, body) = search().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, serde_json::from_str::<Value>(ANSWER).unwrap());
    }
    assert!(server.metrics().await.contains("dedupcad_vision_circuit_state 0"));
    let first = &vision.received()[0];
    assert_eq!(first.path, "/api/v2/search");
    let form_text = String::from_utf8_lossy(&first.body);
    for field in ["name=\"file\"", "name=\"mode\"", "fast", "name=\"max_results\"", "7"] {
        assert!(form_text.contains(field), "{field} missing from the multipart body");
    }

    // A job gets the same answer.
    let job = server.submit(png(2)).await;
    let done = server.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], serde_json::from_str::<Value>(ANSWER).unwrap());
}
