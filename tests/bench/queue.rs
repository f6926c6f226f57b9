//! Jobs per second through the Redis job store with a no-op job body: a
//! bulk of jobs admitted, then drained by worker tasks that claim and
//! finish, as `dedup2d work` will. Starts its own `redis-server` (AOF on,
//! `appendfsync everysec`, as production should run it) on a free port.
//!
//! Run with `cargo bench --bench queue`. Environment: `QUEUE_JOBS` (default
//! 50,000), `QUEUE_WORKERS` (concurrent claim loops, default 100),
//! `QUEUE_CLIENTS` (Redis connections they share, default 4: one per
//! worker process in production).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dedup2d::engine::SearchParams;
use dedup2d::jobs::{Claim, JobStore, NewJob, Outcome, Payload};
use dedup2d::queue::{self, Keys, Timing};
use dedup2d::store::FileRef;

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir.path())
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis { child, port, _dir: dir }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn job(i: usize) -> NewJob {
    NewJob {
        job_id: format!("{i:032x}"),
        created_at: i as f64,
        payload: Payload {
            tenant_id: "bench".into(),
            file_name: "a.png".into(),
            content_type: "image/png".into(),
            file_ref: Some(FileRef::Local {
                path: format!("uploads/bench/{i:032x}/a.png"),
            }),
            file_bytes_b64: None,
            request_params: SearchParams::default(),
            callback_url: None,
            geom_json: None,
        },
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::main]
async fn main() {
    let (jobs, workers, clients) = (
        env("QUEUE_JOBS", 50_000),
        env("QUEUE_WORKERS", 100),
        env("QUEUE_CLIENTS", 4),
    );
    let redis = start_redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let timing = Timing {
        lease_seconds: 30.0,
        ttl_seconds: 3600,
    };
    let mut stores = Vec::new();
    for _ in 0..clients {
        let store = queue::Redis::connect(&url)
            .await
            .expect("connect")
            .jobs(Keys::new("dedup2d", "dedup2d:queue"), timing);
        stores.push(Arc::new(store));
    }

    let started = Instant::now();
    // A thousand submits in flight at a time, as many API connections.
    for first in (0..jobs).step_by(1000) {
        let admits = (first..(first + 1000).min(jobs)).map(|i| {
            let store = stores[i % clients].clone();
            async move { store.admit(job(i), u64::MAX / 2).await }
        });
        let results = futures_util::future::join_all(admits).await;
        assert!(results.iter().all(Result::is_ok), "an admission failed");
    }
    let admit_seconds = started.elapsed().as_secs_f64();

    let finished = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let loops: Vec<_> = (0..workers)
        .map(|w| {
            let (store, finished) = (stores[w % clients].clone(), finished.clone());
            tokio::spawn(async move {
                loop {
                    match store.claim(now(), 5).await.expect("claim") {
                        Claim::Run(job) => {
                            let outcome = Outcome::Completed(serde_json::json!({ "duplicates": [] }));
                            assert!(store.finish(&job, outcome, now()).await.expect("finish"));
                            finished.fetch_add(1, Ordering::Relaxed);
                        }
                        Claim::Empty => break,
                        Claim::Failed { job_id, error, .. } => panic!("{job_id}: {error}"),
                    }
                }
            })
        })
        .collect();
    for handle in loops {
        handle.await.unwrap();
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    assert_eq!(finished.load(Ordering::Relaxed), jobs as u64);
    let counts = stores[0].counts().await.unwrap();
    assert_eq!((counts.pending, counts.running), (0, 0));

    println!(
        "{jobs} jobs, {clients} Redis connections: admitted in {admit_seconds:.2} s ({:.0} jobs/s); \
         drained by {workers} claim loops in {drain_seconds:.2} s ({:.0} jobs/s)",
        jobs as f64 / admit_seconds,
        jobs as f64 / drain_seconds
    );
}
