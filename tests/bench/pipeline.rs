//! End-to-end throughput of the distributed mode: HTTP submit → Redis →
//! `dedup2d work` → completed, with small drawings, on the real binaries.
//!
//! Starts a redis-server (AOF, `appendfsync everysec`), one `dedup2d serve`
//! on the Redis backend and `PIPELINE_WORKERS` (default 1) `dedup2d work`
//! processes sharing a data dir, then has `PIPELINE_CLIENTS` (default 64)
//! connections submit `PIPELINE_JOBS` (default 10,000) async searches of a
//! small PNG (a 12-drawing library is added first, so every search finds a
//! duplicate). The clock stops when the last job has completed.
//! `PIPELINE_QUERY=blank` submits a blank 96×96 page instead: the engine
//! finds no ink and returns at once, which measures the pipeline itself
//! (HTTP, upload, Redis, claim, result) rather than the search.
//!
//! The shared data dir (and Redis's AOF) go on `/dev/shm` when it exists,
//! or under `PIPELINE_DIR`: on this project's VMs the root ext4 runs
//! without a journal, and then ext4 skips every inode deleted in the last
//! seconds when it allocates one, so a directory made and removed for each
//! of thousands of jobs a second cost the API and worker three quarters
//! of their CPU in the kernel's inode search: a measure of that disk, not
//! of the pipeline.
//!
//! Run with `cargo bench --bench pipeline` (add `PIPELINE_WORKERS=2`).

use std::io::Cursor;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use image::{GrayImage, ImageFormat, Luma};

/// Kills its process when dropped, so a failing bench leaves nothing behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn wait_listening(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_redis(dir: &Path) -> (Process, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_listening(port, "redis-server");
    (Process(child), format!("redis://127.0.0.1:{port}"))
}

fn dedup2d(args: &[&str], redis: &str, data_dir: &Path, port: u16) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_dedup2d"))
        .args(args)
        .current_dir(data_dir.parent().unwrap())
        .env("DEDUP2D_ASYNC_BACKEND", "redis")
        .env("DEDUP2D_REDIS_URL", redis)
        .env("DEDUP2D_DATA_DIR", data_dir)
        .env("DEDUP2D_ASYNC_MAX_JOBS", "1000000")
        .env("DEDUP2D_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start dedup2d");
    wait_listening(port, args[0]);
    Process(child)
}

/// A 96×96 line drawing, different for each seed.
fn drawing(seed: u32) -> Vec<u8> {
    let mut image = GrayImage::from_pixel(96, 96, Luma([255]));
    for i in (8..88).filter(|_| seed != BLANK) {
        image.put_pixel(i, 8 + seed % 70, Luma([0]));
        image.put_pixel(8 + (seed * 7) % 70, i, Luma([0]));
        image.put_pixel(i, i, Luma([0]));
    }
    let mut png = Vec::new();
    image.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
    png
}

const BLANK: u32 = u32::MAX;

fn form(png: &[u8]) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(png.to_vec())
        .file_name("query.png")
        .mime_str("image/png")
        .unwrap();
    reqwest::multipart::Form::new().part("file", part)
}

fn scratch_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("PIPELINE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(Path::new("/dev/shm").to_path_buf()).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    eprintln!("data dir and AOF under {}", parent.display());
    tempfile::tempdir_in(parent).unwrap()
}

#[tokio::main]
async fn main() {
    let jobs = setting("PIPELINE_JOBS", 10_000);
    let workers = setting("PIPELINE_WORKERS", 1);
    let clients = setting("PIPELINE_CLIENTS", 64);
    let dir = scratch_dir();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let (_redis, url) = start_redis(dir.path());
    let api_port = free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let _api = dedup2d(&["serve", "--listen", &listen], &url, &data_dir, api_port);
    let base = format!("http://{listen}/api/v1/dedup/2d");
    let http = reqwest::Client::new();
    for seed in 0..12 {
        let added = http
            .post(format!("{base}/index/add"))
            .multipart(form(&drawing(seed)))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 200, "{}", added.text().await.unwrap());
    }
    let metrics: Vec<String> = (0..workers).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let _workers: Vec<Process> = metrics
        .iter()
        .map(|listen| {
            let port = listen.rsplit(':').next().unwrap().parse().unwrap();
            dedup2d(&["work", "--metrics-listen", listen], &url, &data_dir, port)
        })
        .collect();

    let redis = Client::new(Config::from_url(&url).unwrap(), None, None, None);
    redis.init().await.unwrap();
    let blank = std::env::var("PIPELINE_QUERY").is_ok_and(|q| q == "blank");
    let query = Arc::new(drawing(if blank { BLANK } else { 3 }));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let submitters: Vec<_> = (0..clients)
        .map(|_| {
            let (http, base, query, next) = (http.clone(), base.clone(), query.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    let response = http
                        .post(format!("{base}/search?async=true"))
                        .multipart(form(&query))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let submitted = started.elapsed();
    loop {
        let active: u64 = redis.scard("dedup2d:active").await.unwrap();
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = started.elapsed();
    let mut completed = 0.0;
    for listen in &metrics {
        let text = http
            .get(format!("http://{listen}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        completed += text
            .lines()
            .find_map(|l| l.strip_prefix("dedup2d_jobs_total{status=\"completed\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert_eq!(completed as usize, jobs, "every job completed, once");
    let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
    println!(
        "{jobs} {} jobs, {workers} worker process(es), {clients} clients: submitted in {:.2} s ({:.0}/s), \
         all completed in {:.2} s ({:.0} jobs/s end to end)",
        if blank { "blank-page" } else { "drawing" },
        submitted.as_secs_f64(),
        rate(submitted),
        drained.as_secs_f64(),
        rate(drained),
    );
}
