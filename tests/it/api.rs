//! Every endpoint and its exact response shape (CONTRACT §1 and §3).

use serde_json::json;

use crate::support::*;

const MATCH_KEYS: &[&str] = &[
    "drawing_id",
    "file_hash",
    "file_name",
    "similarity",
    "confidence",
    "match_level",
    "verdict",
    "levels",
    "transform",
];
const RESULT_KEYS: &[&str] = &[
    "success",
    "total_matches",
    "duplicates",
    "similar",
    "final_level",
    "timing",
    "level_stats",
    "warnings",
    "error",
];
const JOB_KEYS: &[&str] = &[
    "job_id",
    "tenant_id",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "callback_status",
    "callback_attempts",
    "callback_http_status",
    "callback_finished_at",
    "callback_last_error",
];

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let server = TestServer::start(&[]).await;
    let health = server.root_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "dedup2d");
    let ready = server.client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(keys(&ready), sorted(&["ready", "reason", "checks", "warnings"]));
    assert_eq!(ready["warnings"], serde_json::json!([]));
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["checks"]["database"], true);
    assert_eq!(ready["checks"]["storage"], true);
    let (status, tenant_health) = server.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&tenant_health),
        sorted(&["status", "service", "version", "indexes"])
    );

    let job = server.submit(png(1)).await;
    server.wait_terminal(&job).await;
    let metrics = server.metrics().await;
    for name in [
        "dedup2d_jobs_submitted_total",
        "dedup2d_jobs_completed_total",
        "dedup2d_jobs_total{status=\"completed\"}",
        "dedup2d_job_duration_seconds_bucket",
        "dedup2d_jobs_queued",
        "dedup2d_jobs_active",
        "dedup2d_job_queue_depth",
        "dedup2d_search_mode_total{mode=\"balanced\"}",
        "dedup2d_file_uploads_total{backend=\"local\",status=\"success\"}",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test]
async fn library_add_list_search_and_delete() {
    let server = TestServer::start(&[]).await;
    let bytes = png(7);
    let (status, added) = server.post("/index/add", Some(form(bytes.clone(), "part 7.png"))).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(
        keys(&added),
        sorted(&["success", "drawing_id", "file_hash", "message", "processing_time_ms"])
    );
    assert_eq!(added["file_hash"], sha256_hex(&bytes));
    let id = added["drawing_id"].as_str().unwrap().to_string();
    let other = server.add(DXF.as_bytes().to_vec(), "bracket.dxf").await;

    let (status, listed) = server.get("/index?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(listed["total"], 2);
    assert_eq!(listed["drawings"].as_array().unwrap().len(), 1);
    assert_eq!(listed["drawings"][0]["drawing_id"], id.as_str());
    let (_, second_page) = server.get("/index?limit=1&offset=1").await;
    assert_eq!(second_page["drawings"][0]["drawing_id"], other.as_str());

    let (status, result) = server.post("/search", Some(form(bytes.clone(), "query.png"))).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(keys(&result), sorted(RESULT_KEYS));
    assert_eq!(result["total_matches"], 1);
    let found = &result["duplicates"][0];
    assert_eq!(keys(found), sorted(MATCH_KEYS));
    assert_eq!(found["drawing_id"], id.as_str());
    assert_eq!(found["file_name"], "part 7.png");
    assert_eq!(found["verdict"], "duplicate");
    assert_eq!(found["similarity"], 1.0);
    assert!(result["timing"]["total_ms"].as_f64().unwrap() > 0.0);

    let (_, miss) = server.post("/search?mode=fast", Some(form(png(8), "other.png"))).await;
    assert_eq!(miss["total_matches"], 0);
    assert_eq!(miss["warnings"], json!([]));

    let (status, deleted) = server.delete_as(&format!("/index/{id}"), None).await;
    assert_eq!(status, 200, "{deleted}");
    let (_, after) = server.post("/search", Some(form(bytes, "query.png"))).await;
    assert_eq!(after["total_matches"], 0);
    let (status, again) = server.delete_as(&format!("/index/{id}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(again["detail"]["error"], "DRAWING_NOT_FOUND");
}

#[tokio::test]
async fn chosen_drawing_ids_are_unique_and_validated() {
    let server = TestServer::start(&[]).await;
    let (status, _) = server
        .post("/index/add?drawing_id=part-1", Some(form(png(1), "a.png")))
        .await;
    assert_eq!(status, 200);
    let (status, taken) = server
        .post("/index/add?drawing_id=part-1", Some(form(png(2), "b.png")))
        .await;
    assert_eq!(status, 409);
    assert_eq!(taken["detail"]["error"], "DRAWING_EXISTS");
    let (_, original) = server.post("/search", Some(form(png(1), "q.png"))).await;
    assert_eq!(
        original["duplicates"][0]["drawing_id"], "part-1",
        "the refused add must not touch the original"
    );
    let (status, bad) = server
        .post("/index/add?drawing_id=a/b", Some(form(png(3), "c.png")))
        .await;
    assert_eq!(status, 400);
    assert_eq!(bad["detail"]["parameter"], "drawing_id");
}

#[tokio::test]
async fn async_search_can_be_polled_and_listed() {
    let server = TestServer::start(&[]).await;
    let drawing = server.add(png(3), "three.png").await;
    let (status, accepted) = server
        .post("/search?async=true&max_results=5", Some(form(png(3), "q.png")))
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(
        keys(&accepted),
        sorted(&["job_id", "status", "poll_url", "forced_async_reason"])
    );
    assert_eq!(accepted["status"], "pending");
    assert_eq!(accepted["forced_async_reason"], serde_json::Value::Null);
    let job_id = accepted["job_id"].as_str().unwrap();
    assert_eq!(accepted["poll_url"], format!("{PREFIX}/jobs/{job_id}"));

    let job = server.wait_terminal(job_id).await;
    assert_eq!(keys(&job), sorted(JOB_KEYS));
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["tenant_id"], "local");
    assert!(job["created_at"].as_f64().unwrap() <= job["started_at"].as_f64().unwrap());
    assert!(job["started_at"].as_f64().unwrap() <= job["finished_at"].as_f64().unwrap());
    assert_eq!(keys(&job["result"]), sorted(RESULT_KEYS));
    assert_eq!(job["result"]["duplicates"][0]["drawing_id"], drawing.as_str());
    eventually("a finished job's upload is cleaned up by default", || {
        files_under(&server.uploads_dir()).is_empty()
    })
    .await;

    let second = server.submit(png(4)).await;
    server.wait_terminal(&second).await;
    let (status, list) = server.get("/jobs?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(keys(&list), sorted(&["jobs", "total"]));
    assert_eq!(list["total"], 2);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["job_id"], second.as_str(), "newest first");
    assert_eq!(
        keys(&list["jobs"][0]),
        sorted(&[
            "job_id",
            "tenant_id",
            "status",
            "created_at",
            "started_at",
            "finished_at",
            "error"
        ])
    );
    let (_, completed) = server.get("/jobs?status=completed").await;
    assert_eq!(completed["total"], 2);
    let (_, pending) = server.get("/jobs?status=pending").await;
    assert_eq!(pending["total"], 0);
}

#[tokio::test]
async fn expensive_searches_are_forced_async_with_a_reason() {
    let server = TestServer::start(&[("DEDUP2D_FORCED_ASYNC_FILE_SIZE_BYTES", "100")]).await;
    let (status, by_size) = server.post("/search", Some(form(png(1), "big.png"))).await;
    assert_eq!(status, 200);
    assert_eq!(by_size["status"], "pending", "{by_size}");
    assert_eq!(by_size["forced_async_reason"], "file_size>100B");
    server.wait_terminal(by_size["job_id"].as_str().unwrap()).await;

    let server = TestServer::start(&[]).await;
    let (_, precise) = server.post("/search?mode=precise", Some(form(png(1), "p.png"))).await;
    assert_eq!(precise["forced_async_reason"], "mode=precise", "{precise}");
    let with_geom = form(png(1), "g.png").text("geom_json", GEOM_JSON);
    let (_, geom) = server.post("/search", Some(with_geom)).await;
    assert_eq!(geom["forced_async_reason"], "enable_precision_with_geom_json", "{geom}");
    let without_precision = form(png(1), "g.png").text("geom_json", GEOM_JSON);
    let (_, sync) = server
        .post("/search?enable_precision=false", Some(without_precision))
        .await;
    assert_eq!(sync["success"], true, "{sync}");
    let defaults = TestServer::start(&[]).await;
    let (_, small) = defaults.post("/search", Some(form(png(2), "small.png"))).await;
    assert_eq!(small["success"], true, "a small balanced search stays sync: {small}");
}

#[tokio::test]
async fn precise_search_compares_geom_json_and_boxes_what_differs() {
    let server = TestServer::start(&[
        ("DEDUP2D_FORCED_ASYNC_ON_MODE_PRECISE", "0"),
        ("DEDUP2D_FORCED_ASYNC_ON_PRECISION", "0"),
    ])
    .await;
    let id = server.add(bracket_dxf(), "bracket.dxf").await;
    let query = png_of_dxf(&bracket_dxf());
    let search = |geometry: Option<serde_json::Value>| {
        let mut form = form(query.clone(), "scan.png");
        if let Some(g) = geometry {
            form = form.text("geom_json", g.to_string());
        }
        server.post("/search?mode=precise&similar_threshold=0.5", Some(form))
    };
    let (status, same) = search(None).await;
    assert_eq!(status, 200, "{same}");
    let found = &same["duplicates"][0];
    assert_eq!(
        (found["drawing_id"].as_str(), found["match_level"].as_u64()),
        (Some(id.as_str()), Some(4)),
        "{same}"
    );
    assert_eq!(same["final_level"], 4);
    assert_eq!(found["diff_regions"], json!([]), "{found}");
    assert_eq!(found["transform"]["rotation"], 0);

    let (_, changed) = search(Some(bracket_geometry(true))).await;
    let found = &changed["similar"][0];
    assert_eq!(
        found["drawing_id"],
        id.as_str(),
        "the bigger hole makes it similar: {changed}"
    );
    assert!(found["levels"]["l4"]["similarity"].as_f64().unwrap() < 0.95, "{found}");
    let regions = found["diff_regions"].as_array().unwrap();
    assert!(!regions.is_empty(), "{found}");
    // The changed hole is on the right of the plate.
    assert!(regions.iter().all(|r| r["x1"].as_f64().unwrap() > 0.6), "{regions:?}");

    let (status, bad) = server
        .post(
            "/search?mode=precise",
            Some(form(query.clone(), "scan.png").text("geom_json", r#"[{"type": "spline"}]"#)),
        )
        .await;
    assert_eq!(
        (status, bad["detail"]["error"].as_str()),
        (400, Some("INVALID_GEOM_JSON")),
        "{bad}"
    );
}

#[tokio::test]
async fn rebuild_reindexes_the_stored_library() {
    let server = TestServer::start(&[]).await;
    server.add(png(1), "1.png").await;
    server.add(DXF.as_bytes().to_vec(), "2.dxf").await;
    let (status, rebuilt) = server.post("/index/rebuild", None).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&rebuilt), sorted(&["success", "message"]));
    assert_eq!(rebuilt["success"], true);
    assert!(rebuilt["message"].as_str().unwrap().contains("2 drawings"), "{rebuilt}");
    let (_, found) = server
        .post("/search", Some(form(DXF.as_bytes().to_vec(), "q.dxf")))
        .await;
    assert_eq!(found["total_matches"], 1);
}

#[tokio::test]
async fn rebuild_removes_drawings_whose_file_is_gone() {
    let server = TestServer::start(&[]).await;
    server.add(png(1), "kept.png").await;
    let lost = server.add(png(2), "lost.png").await;
    let lost_file = files_under(&server.data_dir.join("library"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("_lost.png"))
        .unwrap();
    std::fs::remove_file(lost_file).unwrap();
    let (status, rebuilt) = server.post("/index/rebuild", None).await;
    assert_eq!(status, 200);
    assert_eq!(rebuilt["success"], false);
    assert!(rebuilt["message"].as_str().unwrap().contains(&lost), "{rebuilt}");
    let (_, listed) = server.get("/index").await;
    assert_eq!(listed["total"], 1);
}

#[tokio::test]
async fn stats_count_processed_rejected_and_duplicates() {
    let server = TestServer::start(&[]).await;
    server.add(png(1), "1.png").await;
    server.post("/search", Some(form(png(1), "same.png"))).await;
    server.post("/search", Some(form(png(2), "new.png"))).await;
    let (status, _) = server
        .post("/search", Some(form(b"not a drawing".to_vec(), "x.txt")))
        .await;
    assert_eq!(status, 415);
    let stats = server.root_json("/api/v1/stats").await;
    assert_eq!(
        stats,
        json!({"tenant_id": "local", "processed": 2, "rejected": 1, "dup_skipped": 1})
    );
}
