//! `dedup2d gc` against what is live: beside a running embedded `serve` on
//! the local disk, and as the binary on Redis and a real S3 protocol
//! server. Old files are made by setting modification times, which is what
//! both the local store and s3s-fs report as last-modified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dedup2d::config::{Config, Sources};
use dedup2d::gc::{self, Run};
use dedup2d::jobs::{Claim, JobStore, NewJob};
use dedup2d::store::{FileRef, Files};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::Cluster;
use crate::support::process::{Served, free_port, run};
use crate::support::s3::{BUCKET, S3Server, SECRET_KEY};
use crate::support::*;

const UPLOAD_NAME: &str = "0123456789abcdef0123456789abcdef_q.png";

fn two_hours_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(7200)
}

fn age(path: &Path) {
    std::fs::File::options()
        .write(!path.is_dir())
        .read(path.is_dir())
        .open(path)
        .unwrap()
        .set_modified(two_hours_ago())
        .unwrap();
}

/// Writes a file two hours old (its directory too), as a crash or an older
/// deployment would have left it.
fn old_file(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"left behind").unwrap();
    age(path);
    age(path.parent().unwrap());
    path.to_path_buf()
}

fn embedded_config(data_dir: &Path) -> Config {
    let vars = HashMap::from([
        ("DEDUP2D_DATA_DIR".to_string(), data_dir.display().to_string()),
        ("DEDUP2D_LOG".to_string(), "warn".to_string()),
        // Files made two hours old are past it; new ones are not.
        ("DEDUP2D_FILE_STORAGE_RETENTION_SECONDS".to_string(), "5400".to_string()),
    ]);
    Config::load(&Sources::from_env(vars)).unwrap()
}

async fn sweep(config: &Config, execute: bool) -> Run {
    let options = gc::Options {
        execute,
        progress: false,
    };
    gc::run(config.clone(), options, CancellationToken::new())
        .await
        .unwrap()
        .expect("retention is on")
}

#[tokio::test]
async fn gc_beside_a_running_serve_deletes_only_old_unreferenced_uploads() {
    // serve as its own process, so its /metrics is its own, not this test
    // binary's shared recorder.
    let dir = tempfile::tempdir().unwrap();
    let slow = [
        ("DEDUP2D_ASYNC_MAX_CONCURRENCY", "1"),
        ("DEDUP2D_JOB_DELAY_MS", "60000"),
    ];
    let served = Served::start(dir.path(), free_port(), &slow).await;
    let server = TestServer::attach(&served.base, dir.path());
    let running = server.submit(png(1)).await;
    let pending = server.submit(png(2)).await;
    server.wait_status(&running, &["in_progress"]).await;
    let uploads = server.uploads_dir();
    let live: Vec<PathBuf> = files_under(&uploads);
    assert_eq!(live.len(), 2);
    live.iter().for_each(|f| age(f));

    let orphan = old_file(&uploads.join("crashed-job").join(UPLOAD_NAME));
    let young = uploads.join("new-job").join(UPLOAD_NAME);
    std::fs::create_dir_all(young.parent().unwrap()).unwrap();
    std::fs::write(&young, b"just stored").unwrap();
    let foreign = old_file(&uploads.join("notes").join("readme.txt"));
    let half_written = old_file(&uploads.join("torn-job").join(format!("{UPLOAD_NAME}#12")));
    let empty_dir = uploads.join("emptied-job");
    std::fs::create_dir(&empty_dir).unwrap();
    age(&empty_dir);
    let before = files_under(&uploads);

    let config = embedded_config(&server.data_dir);
    let dry = sweep(&config, false).await;
    assert_eq!(files_under(&uploads), before, "a dry run deletes nothing");
    assert!(empty_dir.exists());
    let counts = |r: &Run| {
        (
            r.live_files,
            r.scanned,
            r.kept_live,
            r.kept_young,
            r.left_alone,
            r.deleted,
            r.temp_files_deleted,
            r.empty_dirs_removed,
        )
    };
    assert!(dry.dry_run);
    assert_eq!(counts(&dry), (2, 5, 2, 1, 1, 1, 1, 2), "{dry:?}");

    let done = sweep(&config, true).await;
    assert_eq!(counts(&done), counts(&dry), "{done:?}");
    assert_eq!(done.bytes_freed, 2 * "left behind".len() as u64);
    assert!(!orphan.exists() && !half_written.exists() && !empty_dir.exists());
    assert!(!uploads.join("torn-job").exists() && !uploads.join("crashed-job").exists());
    for kept in live.iter().chain([&young, &foreign]) {
        assert!(kept.exists(), "{} was deleted", kept.display());
    }

    // The runs are in serve's database, so its /metrics shows them.
    for (series, value) in [
        ("dedup2d_gc_runs_total{mode=\"execute\"}", 1.0),
        ("dedup2d_gc_runs_total{mode=\"dry_run\"}", 1.0),
        ("dedup2d_gc_files_deleted_total", 1.0),
        ("dedup2d_gc_bytes_freed_total", 22.0),
    ] {
        assert_eq!(served.metric(series).await, value, "{series}");
    }
    assert!(served.metric("dedup2d_gc_last_run_timestamp_seconds").await > 0.0);
    for job in [&pending, &running] {
        server.post(&format!("/jobs/{job}/cancel"), None).await;
    }
}

#[tokio::test]
async fn gc_needs_the_database_of_the_data_dir_and_off_means_nothing_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(&dir.path().join("typo"));
    let err = gc::run(
        config.clone(),
        gc::Options {
            execute: true,
            progress: false,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("DEDUP2D_DATA_DIR"), "{err:#}");
    assert!(!dir.path().join("typo").exists(), "a failed gc creates nothing");
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::write(dir.path().join("empty/dedup2d.db"), b"").unwrap();
    let empty = embedded_config(&dir.path().join("empty"));
    let options = gc::Options {
        execute: true,
        progress: false,
    };
    let err = gc::run(empty, options, CancellationToken::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("no jobs table"), "{err:#}");

    let vars = HashMap::from([
        ("DEDUP2D_DATA_DIR".to_string(), dir.path().display().to_string()),
        ("DEDUP2D_FILE_STORAGE_RETENTION_SECONDS".to_string(), "0".to_string()),
    ]);
    let off = Config::load(&Sources::from_env(vars)).unwrap();
    let run = gc::run(
        off,
        gc::Options {
            execute: true,
            progress: false,
        },
        CancellationToken::new(),
    )
    .await;
    assert!(run.unwrap().is_none());
}

/// Stores an upload through `files` and ages it on the S3 server's disk.
async fn old_upload(s3: &S3Server, files: &Files, job_id: &str) -> FileRef {
    let file = files.put_upload(job_id, "q.png", Bytes::from(png(1))).await.unwrap();
    let FileRef::S3 { key, .. } = &file else {
        panic!("{file:?}")
    };
    age(&s3.dir.path().join(BUCKET).join(key));
    file
}

/// Runs the binary off the test's runtime thread, which serves S3.
async fn gc_binary(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (bool, Value, String) {
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let (args, env, cwd) = (
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        owned(env),
        cwd.to_path_buf(),
    );
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env, &cwd)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn job(id: &str, file: FileRef) -> NewJob {
    NewJob {
        job_id: id.into(),
        created_at: 1.0,
        payload: payload(Some(file), None),
    }
}

#[tokio::test]
async fn gc_on_s3_and_redis_keeps_live_jobs_files_and_deletes_orphans() {
    let cluster = Cluster::start().await;
    let s3 = S3Server::start().await;
    let files = Files::s3(&s3.config(BUCKET, SECRET_KEY)).unwrap();
    let queue = cluster.queue().await;
    // Live: one running, one dead-lettered (a replay runs it), one queued.
    for id in ["running-job", "dead-job", "queued-job"] {
        let file = old_upload(&s3, &files, id).await;
        queue.admit(job(id, file), 100).await.unwrap();
    }
    assert!(matches!(queue.claim(2.0, 5).await.unwrap(), Claim::Run(_)));
    assert!(matches!(queue.claim(2.0, 0).await.unwrap(), Claim::Failed { .. }));
    let orphan = old_upload(&s3, &files, "forgotten-job").await;
    let young = files.put_upload("new-job", "q.png", Bytes::from(png(2))).await.unwrap();
    let drawing = files.put_drawing("tenant", "d.png", Bytes::from(png(3))).await.unwrap();
    let FileRef::S3 { key: drawing_key, .. } = &drawing else {
        panic!()
    };
    age(&s3.dir.path().join(BUCKET).join(drawing_key));
    let sibling = old_file(&s3.dir.path().join(BUCKET).join("uploads-old/old-job").join(UPLOAD_NAME));

    let listed: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(files.list_uploads()).await;
    let listed: Vec<_> = listed.into_iter().map(Result::unwrap).collect();
    assert_eq!(listed.len(), 5, "only what is under uploads/");
    let orphan_key = files.upload_key(&orphan).unwrap();
    let orphan_listed = listed.iter().find(|l| l.key == orphan_key).unwrap();
    let listed_age = SystemTime::now().duration_since(orphan_listed.modified).unwrap();
    assert!(
        listed_age > Duration::from_secs(7000),
        "last-modified is read: {listed_age:?}"
    );

    let redis_url = cluster.redis.url();
    let mut env = s3.env(SECRET_KEY);
    env.extend([
        ("DEDUP2D_ASYNC_BACKEND", "redis"),
        ("DEDUP2D_REDIS_URL", redis_url.as_str()),
    ]);
    // An API process of the fleet records where uploads go.
    let _api = cluster.api(&env).await;
    let all_keys = || s3.keys_under("");
    let before = all_keys();
    let cwd = cluster.data_dir.parent().unwrap();
    let (ok, dry, stderr) = gc_binary(&["gc", "--json", "--retention-seconds", "3600"], &env, cwd).await;
    assert!(ok, "{stderr}");
    assert_eq!(all_keys(), before, "a dry run deletes nothing");
    let counts = |r: &Value| ["scanned", "kept_live", "kept_young", "deleted"].map(|k| r[k].as_u64().unwrap_or(99));
    assert_eq!(
        (dry["dry_run"].as_bool(), counts(&dry)),
        (Some(true), [5, 3, 1, 1]),
        "{dry}"
    );

    let (ok, done, stderr) = gc_binary(&["gc", "--execute", "--json"], &env, cwd).await;
    assert!(ok, "{stderr}");
    assert_eq!(counts(&done), [5, 3, 1, 1], "{done}");
    assert_eq!(done["bytes_freed"], png(1).len(), "{done}");
    assert!(files.get(&orphan).await.is_err(), "the orphan is gone");
    for (id, kept) in listed.iter().filter(|l| l.key != orphan_key).enumerate() {
        assert!(all_keys().contains(&kept.key), "{id}: {} was deleted", kept.key);
    }
    assert!(files.get(&young).await.is_ok() && files.get(&drawing).await.is_ok());
    assert!(sibling.exists(), "a sibling prefix is not ours");

    // A worker of the fleet exports what the runs recorded.
    let worker = cluster.worker(&env).await;
    assert_eq!(worker.metric("dedup2d_gc_runs_total{mode=\"execute\"}").await, 1.0);
    assert_eq!(worker.metric("dedup2d_gc_runs_total{mode=\"dry_run\"}").await, 1.0);
    assert_eq!(worker.metric("dedup2d_gc_files_deleted_total").await, 1.0);
    assert!(worker.metric("dedup2d_gc_last_run_timestamp_seconds").await > 0.0);
}

#[tokio::test]
async fn gc_deletes_nothing_when_the_job_store_is_not_the_services() {
    let cluster = Cluster::start().await;
    let s3 = S3Server::start().await;
    let files = Files::s3(&s3.config(BUCKET, SECRET_KEY)).unwrap();
    let orphan = old_upload(&s3, &files, "forgotten-job").await;
    let redis_url = cluster.redis.url();
    let mut env = s3.env(SECRET_KEY);
    env.extend([
        ("DEDUP2D_ASYNC_BACKEND", "redis"),
        ("DEDUP2D_REDIS_URL", redis_url.as_str()),
    ]);
    let cwd = cluster.data_dir.parent().unwrap();
    let refused = |why: &'static str| {
        let env = env.clone();
        async move {
            let (ok, _, stderr) = gc_binary(&["gc", "--execute"], &env, cwd).await;
            assert!(
                !ok && stderr.contains("nothing was deleted") && stderr.contains(why),
                "{stderr}"
            );
            let (ok, dry, stderr) = gc_binary(&["gc", "--json"], &env, cwd).await;
            assert!(ok, "{stderr}");
            assert!(dry["warnings"][0].as_str().unwrap().contains(why), "{dry}");
        }
    };
    // No serve or work has used this Redis.
    refused("no dedup2d serve or work").await;
    // One that stores uploads elsewhere.
    let other = [env.as_slice(), &[("DEDUP2D_S3_PREFIX", "elsewhere")]].concat();
    drop(cluster.api(&other).await);
    refused("the service stores uploads at s3:drawings/elsewhere").await;
    // The service's own, but a live job's file is somewhere gc cannot see.
    drop(cluster.api(&env).await);
    let queue = cluster.queue().await;
    let elsewhere = FileRef::S3 {
        bucket: "another-bucket".into(),
        key: "uploads/j/x.png".into(),
    };
    queue.admit(job("elsewhere-job", elsewhere), 100).await.unwrap();
    refused("1 live jobs reference files outside").await;
    assert!(files.get(&orphan).await.is_ok());
}

#[tokio::test]
async fn gc_exits_non_zero_naming_what_it_cannot_reach() {
    let cluster = Cluster::start().await;
    let s3 = S3Server::start().await;
    let cwd = cluster.data_dir.parent().unwrap();
    let redis_url = cluster.redis.url();
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    for (secret, url, names) in [
        ("wrong-secret", redis_url.as_str(), "file storage"),
        (SECRET_KEY, dead_redis.as_str(), "Redis"),
    ] {
        let mut env = s3.env(secret);
        env.extend([("DEDUP2D_ASYNC_BACKEND", "redis"), ("DEDUP2D_REDIS_URL", url)]);
        let (ok, _, stderr) = gc_binary(&["gc", "--execute"], &env, cwd).await;
        assert!(!ok, "gc succeeded without {names}");
        assert!(stderr.contains(names), "{stderr}");
    }
}
