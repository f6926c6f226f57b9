//! Async submit load test: 32 clients posting a ~100 KB PNG to
//! `POST /api/v1/dedup/2d/search?async=true` against the real server binary.
//!
//! Run with `cargo bench --bench submit`. Environment:
//! - `BENCH_ENV`: space-separated `KEY=VALUE` pairs passed to the server,
//!   e.g. `BENCH_ENV="DEDUP2D_ASYNC_MAX_JOBS=1000000"`;
//! - `BENCH_SECONDS`: length of the measured window (default 10), after a
//!   2 s warm-up whose results are discarded.

use std::io::Cursor;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{ImageFormat, RgbImage};

const CLIENTS: usize = 32;
const WARM_UP: Duration = Duration::from_secs(2);
const DEFAULT_SECONDS: u64 = 10;
const IMAGE_WIDTH: u32 = 190;
const IMAGE_HEIGHT: u32 = 180;

/// Kills the server when dropped, so a panicking bench leaves nothing behind.
struct Server {
    child: Child,
    port: u16,
    _data_dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One finished request: when it started and ended (relative to the run's
/// start), and its HTTP status, or `None` for a transport error.
struct Sample {
    started: Duration,
    ended: Duration,
    status: Option<u16>,
}

fn parse_bench_env(raw: &str) -> Vec<(String, String)> {
    raw.split_whitespace()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("BENCH_ENV entry {pair:?} is not KEY=VALUE"));
            (key.to_string(), value.to_string())
        })
        .collect()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn start_server(extra_env: &[(String, String)]) -> Server {
    let data_dir = tempfile::tempdir().expect("temporary data dir");
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dedup2d"));
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir.path())
        // No stray `config/dedup2d.toml` from the working directory.
        .current_dir(data_dir.path())
        .env("DEDUP2D_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let child = command.spawn().expect("start the dedup2d server");
    Server {
        child,
        port,
        _data_dir: data_dir,
    }
}

async fn wait_healthy(client: &reqwest::Client, server: &mut Server) {
    let url = format!("http://127.0.0.1:{}/health", server.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(&url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the server exited before it was healthy: {status}");
        }
        assert!(Instant::now() < deadline, "the server was not healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Noise from xorshift32, so the PNG barely compresses: 190×180 RGB is about 100 KB.
fn noise_png() -> Vec<u8> {
    let mut state: u32 = 0x9E37_79B9;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let image = RgbImage::from_fn(IMAGE_WIDTH, IMAGE_HEIGHT, |_, _| {
        let [r, g, b, _] = next().to_le_bytes();
        image::Rgb([r, g, b])
    });
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .expect("encode the PNG");
    png
}

async fn client_loop(
    client: reqwest::Client,
    url: Arc<str>,
    png: bytes::Bytes,
    run_start: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(png.clone()), png.len() as u64)
            .file_name("bench.png")
            .mime_str("image/png")
            .expect("valid mime type");
        let form = reqwest::multipart::Form::new().part("file", part);
        let started = tokio::time::Instant::now();
        let request = async {
            let response = client.post(&*url).multipart(form).send().await?;
            let status = response.status().as_u16();
            response.bytes().await?;
            Ok::<u16, reqwest::Error>(status)
        };
        // A request still in flight at the deadline is dropped, not waited for.
        let Ok(outcome) = tokio::time::timeout_at(deadline, request).await else {
            break;
        };
        let ended = tokio::time::Instant::now();
        samples.push(Sample {
            started: started - run_start,
            ended: ended - run_start,
            status: outcome.ok(),
        });
    }
    samples
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let bench_env_raw = std::env::var("BENCH_ENV").unwrap_or_default();
    let extra_env = parse_bench_env(&bench_env_raw);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .expect("BENCH_SECONDS must be a whole number of seconds")
        })
        .unwrap_or(DEFAULT_SECONDS);
    assert!(seconds > 0, "BENCH_SECONDS must be at least 1");
    let measured = Duration::from_secs(seconds);

    let png = noise_png();
    assert!(
        (90_000..=110_000).contains(&png.len()),
        "the PNG is {} bytes, expected about 100 KB",
        png.len()
    );
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {nproc} cores (available_parallelism)");
    println!("BENCH_ENV: {:?}", bench_env_raw.trim());
    println!(
        "payload: {IMAGE_WIDTH}x{IMAGE_HEIGHT} RGB noise PNG, {} bytes",
        png.len()
    );
    println!(
        "load: {CLIENTS} clients, {} s warm-up, {seconds} s measured",
        WARM_UP.as_secs()
    );

    let mut server = start_server(&extra_env);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let samples = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS * 2)
            .build()
            .expect("HTTP client");
        wait_healthy(&client, &mut server).await;
        let url: Arc<str> = format!("http://127.0.0.1:{}/api/v1/dedup/2d/search?async=true", server.port).into();
        let png = bytes::Bytes::from(png);
        let run_start = tokio::time::Instant::now();
        let deadline = run_start + WARM_UP + measured;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                tokio::spawn(client_loop(
                    client.clone(),
                    url.clone(),
                    png.clone(),
                    run_start,
                    deadline,
                ))
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.expect("client task"));
        }
        samples
    });
    drop(runtime);
    drop(server);

    // Only requests that started after the warm-up count; those cut off by
    // the deadline were never recorded.
    let window: Vec<&Sample> = samples.iter().filter(|s| s.started >= WARM_UP).collect();
    let mut accepted: Vec<Duration> = window
        .iter()
        .filter(|s| s.status == Some(200))
        .map(|s| s.ended - s.started)
        .collect();
    accepted.sort();
    let too_many = window.iter().filter(|s| s.status == Some(429)).count();
    let transport_errors = window.iter().filter(|s| s.status.is_none()).count();
    let other = window
        .iter()
        .filter(|s| matches!(s.status, Some(code) if code != 200 && code != 429))
        .count();
    let mut other_codes: Vec<u16> = window
        .iter()
        .filter_map(|s| s.status)
        .filter(|&code| code != 200 && code != 429)
        .collect();
    other_codes.sort_unstable();
    other_codes.dedup();

    println!();
    println!("requests in window: {}", window.len());
    println!(
        "accepted (200): {} = {:.1} jobs/s",
        accepted.len(),
        accepted.len() as f64 / measured.as_secs_f64()
    );
    println!("queue full (429): {too_many}");
    println!("other status: {other} {other_codes:?}");
    println!("transport errors: {transport_errors}");
    println!(
        "accepted latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(percentile(&accepted, 50.0)),
        ms(percentile(&accepted, 90.0)),
        ms(percentile(&accepted, 99.0)),
        ms(accepted.last().copied().unwrap_or_default()),
    );
}
