//! `dedup2d import`: a folder bulk-added through the API of a real server,
//! in-process and as the built binary.

use std::collections::BTreeSet;
use std::path::Path;

use dedup2d::import::{self, Options, SkipKind, Summary};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const KEY: &str = "key-of-the-importer";

fn options(dir: &Path, url: &str, api_key: Option<&str>) -> Options {
    Options {
        dir: dir.to_path_buf(),
        url: url.to_string(),
        api_key: api_key.map(str::to_string),
        parallel: 3,
        recursive: false,
        dry_run: false,
        progress: false,
    }
}

/// A folder as a user has one: drawings, a second copy of one, a file with
/// a drawing's extension that is not a drawing, notes, a hidden file and a
/// subfolder.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    };
    write("a.png", &png(1));
    write("b.png", &png(2));
    write("c.dxf", DXF.as_bytes());
    write("copy-of-b.png", &png(2));
    write("e.PNG", &png(3));
    write("fake.png", b"these are meeting notes, not a drawing");
    write("notes.txt", b"read me");
    write(".hidden.png", &png(8));
    write("sub/f.png", &png(4));
    dir
}

fn files(list: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<String> {
    list.into_iter().map(|s| s.as_ref().to_string()).collect()
}

fn added(summary: &Summary) -> Vec<String> {
    files(summary.added.iter().map(|a| &a.file))
}

fn skipped(summary: &Summary, kind: SkipKind) -> Vec<String> {
    files(summary.skipped.iter().filter(|s| s.kind == kind).map(|s| &s.file))
}

async fn library_hashes(server: &TestServer) -> BTreeSet<String> {
    let (status, body) = server.get("/index?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["drawings"]
        .as_array()
        .expect("drawings")
        .iter()
        .map(|d| d["file_hash"].as_str().expect("file_hash").to_string())
        .collect()
}

fn hashes(contents: &[&[u8]]) -> BTreeSet<String> {
    contents.iter().map(|bytes| sha256_hex(bytes)).collect()
}

#[tokio::test]
async fn import_adds_new_drawings_once_and_says_why_it_skipped_or_failed_the_rest() {
    let server = TestServer::start(&[]).await;
    server.add(png(1), "a.png").await;
    let dir = folder();

    let summary = import::run(&options(dir.path(), &server.base, None), CancellationToken::new())
        .await
        .expect("import ran");

    assert_eq!(added(&summary), ["b.png", "c.dxf", "e.PNG"]);
    assert!(summary.added.iter().all(|a| a.drawing_id.is_some()));
    assert_eq!(skipped(&summary, SkipKind::InLibrary), ["a.png"]);
    assert_eq!(skipped(&summary, SkipKind::InFolder), ["copy-of-b.png"]);
    let copy = summary
        .skipped
        .iter()
        .find(|s| s.file == "copy-of-b.png")
        .expect("skip");
    assert_eq!(copy.reason, "same bytes as b.png");
    assert_eq!(skipped(&summary, SkipKind::NotADrawing), ["notes.txt"]);
    assert_eq!(summary.failed.len(), 1, "{:?}", summary.failed);
    let fake = &summary.failed[0];
    assert_eq!((fake.file.as_str(), fake.status), ("fake.png", Some(415)));
    assert!(fake.error.is_some(), "the server's code is kept: {fake:?}");
    assert!(summary.stopped.is_none() && summary.not_started.is_empty());
    let error = summary.outcome().expect_err("a failed file fails the import");
    assert!(error.to_string().contains("1 failed"), "{error}");
    assert!(summary.text().contains("failed fake.png: 415"), "{}", summary.text());

    let expected = hashes(&[&png(1), &png(2), DXF.as_bytes(), &png(3)]);
    assert_eq!(library_hashes(&server).await, expected);

    let again = import::run(&options(dir.path(), &server.base, None), CancellationToken::new())
        .await
        .expect("import ran");
    assert!(again.added.is_empty(), "a second run adds nothing: {:?}", again.added);
    let in_library = ["a.png", "b.png", "c.dxf", "copy-of-b.png", "e.PNG"];
    assert_eq!(skipped(&again, SkipKind::InLibrary), in_library);
    assert_eq!(library_hashes(&server).await, expected);
}

#[tokio::test]
async fn a_dry_run_uploads_nothing_and_recursive_reaches_subfolders() {
    let server = TestServer::start(&[]).await;
    let dir = folder();
    let mut dry = options(dir.path(), &server.base, None);
    dry.dry_run = true;
    dry.recursive = true;

    let plan = import::run(&dry, CancellationToken::new()).await.expect("dry run");
    let would_add = ["a.png", "b.png", "c.dxf", "e.PNG", "fake.png", "sub/f.png"];
    assert_eq!(
        added(&plan),
        would_add,
        "the server, not the name, decides what is a drawing"
    );
    assert!(plan.dry_run && plan.added.iter().all(|a| a.drawing_id.is_none()));
    assert!(plan.text().starts_with("would add 6"), "{}", plan.text());
    assert_eq!(server.get("/index").await.1["total"], 0);

    let mut real = dry.clone();
    real.dry_run = false;
    let summary = import::run(&real, CancellationToken::new()).await.expect("import");
    assert_eq!(added(&summary), ["a.png", "b.png", "c.dxf", "e.PNG", "sub/f.png"]);
    let json = summary.to_json();
    assert_eq!(json["counts"]["added"], 5);
    assert_eq!(json["failed"][0]["status"], 415);
}

#[tokio::test]
async fn a_wrong_or_missing_key_stops_before_any_upload() {
    let server = TestServer::start(&[("DEDUP2D_API_KEYS", KEY)]).await;
    let dir = folder();

    for (key, says) in [(Some("not-the-key"), "Invalid API Key"), (None, "Missing API Key")] {
        let summary = import::run(&options(dir.path(), &server.base, key), CancellationToken::new())
            .await
            .expect("import ran");
        let stopped = summary.stopped.clone().expect("stopped");
        assert!(stopped.contains("401") && stopped.contains(says), "{stopped}");
        assert!(summary.added.is_empty() && summary.failed.is_empty());
        assert_eq!(summary.not_started.len(), 6, "{:?}", summary.not_started);
        let error = summary.outcome().expect_err("fails");
        assert!(error.to_string().contains(says), "{error}");
    }
    assert_eq!(server.get("/index").await.1["total"], 0);

    let summary = import::run(&options(dir.path(), &server.base, Some(KEY)), CancellationToken::new())
        .await
        .expect("import ran");
    assert_eq!(summary.added.len(), 4);
    assert_eq!(server.get("/index").await.1["total"], 4);
}

#[tokio::test]
async fn an_unreachable_server_or_ctrl_c_ends_the_run_with_a_summary() {
    let dir = folder();
    let nobody = format!("http://127.0.0.1:{}", process::free_port());
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let summary = import::run(&options(dir.path(), &nobody, None), shutdown)
        .await
        .expect("import ran");
    let stopped = summary.stopped.clone().expect("stopped");
    assert!(stopped.contains("cannot list the library"), "{stopped}");
    assert_eq!(summary.not_started.len(), 6);

    let server = TestServer::start(&[]).await;
    let interrupted = CancellationToken::new();
    interrupted.cancel();
    let summary = import::run(&options(dir.path(), &server.base, None), interrupted)
        .await
        .expect("import ran");
    assert_eq!(summary.stopped.as_deref(), Some("interrupted"));
    assert!(summary.added.is_empty());
    assert_eq!(summary.not_started.len(), 6);
    assert_eq!(server.get("/index").await.1["total"], 0);
}

#[tokio::test]
async fn the_binary_takes_the_key_from_the_environment_and_exits_non_zero_on_a_failure() {
    let server = TestServer::start(&[("DEDUP2D_API_KEYS", KEY)]).await;
    let dir = folder();
    let path = dir.path().to_path_buf();
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        let args = ["import", path.to_str().expect("utf-8"), "--url", &base, "--json"];
        process::run(&args, &[("DEDUP2D_API_KEY", KEY)], &path)
    })
    .await
    .expect("ran");

    assert_eq!(output.status.code(), Some(1), "fake.png failed");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json summary on stdout");
    assert_eq!(summary["counts"]["added"], 4, "{summary}");
    assert_eq!(summary["counts"]["failed"], 1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("import incomplete: 1 failed"), "{stderr}");
    assert_eq!(server.get("/index").await.1["total"], 4);
}
