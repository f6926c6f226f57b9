//! Tenants see only their own jobs and drawings.

use crate::support::*;

const KEY_A: &str = "key-of-tenant-a";
const KEY_B: &str = "key-of-tenant-b";

#[tokio::test]
async fn missing_and_unknown_keys_get_401() {
    let server = TestServer::start(&[("DEDUP2D_API_KEYS", "key-of-tenant-a,key-of-tenant-b")]).await;
    let response = server.client.get(server.api("/jobs")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"detail": "Missing API Key"})
    );
    let (status, body) = server.get_as("/jobs", Some("wrong")).await;
    assert_eq!((status, body), (401, serde_json::json!({"detail": "Invalid API Key"})));
    let bearer = server
        .client
        .get(server.api("/jobs"))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let health = server.client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness needs no key");
}

#[tokio::test]
async fn tenants_never_see_each_others_jobs_or_drawings() {
    let server = TestServer::start(&[("API_KEYS", &format!("{KEY_A},{KEY_B}"))]).await;
    let drawing = server.add(png(5), "a.png").await;
    let job_id = server.submit(png(5)).await;
    let job = server.wait_terminal(&job_id).await;
    assert_eq!(job["tenant_id"], sha256_hex(KEY_A.as_bytes())[..16]);
    assert_eq!(job["result"]["total_matches"], 1);

    let b = Some(KEY_B);
    let (status, body) = server.get_as(&format!("/jobs/{job_id}"), b).await;
    assert_eq!(status, 403);
    assert_eq!(body["detail"]["error"], "JOB_FORBIDDEN");
    assert_eq!(body["detail"]["job_id"], job_id.as_str());
    let (status, body) = server.post_as(&format!("/jobs/{job_id}/cancel"), None, b).await;
    assert_eq!((status, body["detail"]["error"].as_str()), (403, Some("JOB_FORBIDDEN")));
    let (_, jobs) = server.get_as("/jobs", b).await;
    assert_eq!(jobs["total"], 0);
    let (_, drawings) = server.get_as("/index", b).await;
    assert_eq!(drawings["total"], 0);
    let (_, search) = server.post_as("/search", Some(form(png(5), "q.png")), b).await;
    assert_eq!(search["total_matches"], 0, "search stays inside the tenant: {search}");
    let (status, _) = server.delete_as(&format!("/index/{drawing}"), b).await;
    assert_eq!(status, 404);
    let (_, still) = server.post("/search", Some(form(png(5), "q.png"))).await;
    assert_eq!(still["total_matches"], 1, "B's delete did not touch A's drawing");

    let metrics = server.metrics().await;
    assert!(metrics.contains("dedup2d_tenant_access_denied_total{operation=\"get\"}"));
    assert!(metrics.contains("dedup2d_tenant_access_denied_total{operation=\"cancel\"}"));
}
