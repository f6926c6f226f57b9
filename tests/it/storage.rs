//! File storage on a real S3 protocol server (`s3s`, SigV4 checked): the
//! same `Files` the API and workers use, with uploads and library drawings
//! under their own prefixes, and refusals that say what is wrong.

use bytes::Bytes;
use dedup2d::store::{FileRef, Files, StoreError};

use crate::support::s3::{BUCKET, S3Server, SECRET_KEY};
use crate::support::{TestServer, form, png};

#[tokio::test]
async fn uploads_and_drawings_round_trip_through_s3_under_their_prefixes() {
    let s3 = S3Server::start().await;
    let files = Files::s3(&s3.config(BUCKET, SECRET_KEY)).unwrap();
    files.check().await.expect("a good bucket and key are ready");
    assert_eq!(files.backend(), "s3");

    let upload = files
        .put_upload("job-1", "part (rev A).png", Bytes::from_static(b"upload"))
        .await
        .unwrap();
    let FileRef::S3 { bucket, key } = &upload else {
        panic!("{upload:?}")
    };
    assert_eq!(bucket, BUCKET);
    assert!(
        key.starts_with("uploads/job-1/") && key.ends_with("_part_rev_A_.png"),
        "{key}"
    );
    assert_eq!(files.get(&upload).await.unwrap(), Bytes::from_static(b"upload"));

    let drawing = files
        .put_drawing("tenant-1", "d.dxf", Bytes::from_static(b"drawing"))
        .await
        .unwrap();
    let FileRef::S3 { key, .. } = &drawing else {
        panic!("{drawing:?}")
    };
    assert!(key.starts_with("library/tenant-1/"), "{key}");
    assert_eq!(files.get(&drawing).await.unwrap(), Bytes::from_static(b"drawing"));

    files.delete(&upload).await.unwrap();
    files.delete(&upload).await.expect("deleting what is gone succeeds");
    assert!(matches!(files.get(&upload).await, Err(StoreError::NotFound(_))));

    for outside in [
        FileRef::S3 {
            bucket: "other".into(),
            key: "uploads/job-1/x".into(),
        },
        FileRef::S3 {
            bucket: BUCKET.into(),
            key: "secrets/x".into(),
        },
        FileRef::S3 {
            bucket: BUCKET.into(),
            key: "uploads/../library/x".into(),
        },
        FileRef::Local {
            path: "/etc/passwd".into(),
        },
    ] {
        assert!(
            matches!(files.get(&outside).await, Err(StoreError::InvalidRef(_))),
            "{outside:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_is_a_clear_unavailable_not_a_missing_file() {
    let s3 = S3Server::start().await;
    let files = Files::s3(&s3.config(BUCKET, "not-the-secret")).unwrap();
    let ready = files.check().await.unwrap_err();
    assert!(matches!(ready, StoreError::Unavailable(_)), "{ready:?}");
    assert!(ready.to_string().contains("credentials"), "{ready}");
    let upload = files
        .put_upload("job-1", "a.png", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(upload, StoreError::Unavailable(_)), "{upload:?}");
}

#[tokio::test]
async fn serve_on_s3_keeps_uploads_and_drawings_in_the_bucket() {
    let s3 = S3Server::start().await;
    let server = TestServer::start(&s3.env(SECRET_KEY)).await;
    let drawing = server.add(png(1), "part.png").await;
    let library = s3.keys_under("library");
    assert_eq!(library.len(), 1, "{library:?}");
    assert!(library[0].ends_with("_part.png"), "{library:?}");

    let job = server.submit(png(1)).await;
    let done = server.wait_terminal(&job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["duplicates"][0]["drawing_id"], drawing, "{done}");
    // CONTRACT §4: S3 uploads stay for the bucket's lifecycle rule (or gc).
    let uploads = s3.keys_under("uploads");
    assert!(
        uploads.len() == 1 && uploads[0].starts_with(&format!("uploads/{job}/")),
        "{uploads:?}"
    );
    assert_eq!(server.root_json("/ready").await["checks"]["storage"], true);
}

#[tokio::test]
async fn serve_with_a_wrong_s3_secret_is_unready_and_answers_uploads_with_503() {
    let s3 = S3Server::start().await;
    let server = TestServer::start_unready(&s3.env("not-the-secret")).await;
    let response = server.client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let ready: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ready["checks"]["storage"], false, "{ready}");
    assert!(ready["reason"].as_str().unwrap().contains("credentials"), "{ready}");

    let (status, body) = server.post("/search?async=true", Some(form(png(1), "q.png"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["detail"]["error"], "BACKEND_UNAVAILABLE", "{body}");
    assert!(s3.keys_under("uploads").is_empty());
}
