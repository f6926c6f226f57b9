//! Shared test support: servers started for real on loopback, in-process or
//! as the built binary, and fixtures the tests generate themselves.

pub mod cluster;
pub mod fixtures;
pub mod process;
pub mod receiver;
pub mod redis;
pub mod s3;
pub mod server;

pub use fixtures::*;
pub use server::TestServer;

use std::time::Duration;

use serde_json::Value;

pub const PREFIX: &str = "/api/v1/dedup/2d";

/// Polls a job until it reaches a terminal status (bounded).
pub async fn wait_terminal(client: &reqwest::Client, base: &str, key: Option<&str>, job_id: &str) -> Value {
    wait_status(client, base, key, job_id, &["completed", "failed", "canceled"]).await
}

pub async fn wait_status(
    client: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    job_id: &str,
    wanted: &[&str],
) -> Value {
    let url = format!("{base}{PREFIX}/jobs/{job_id}");
    for _ in 0..600 {
        let mut request = client.get(&url);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        if let Ok(response) = request.send().await
            && response.status() == 200
        {
            let job: Value = response.json().await.expect("job json");
            if wanted.contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job_id} never reached {wanted:?}");
}

/// Waits (bounded) for a condition that follows an answer asynchronously.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never happened: {what}");
}

/// The keys of a JSON object, sorted, to compare response shapes exactly.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

pub fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

/// Files under a directory, recursively (missing directory = none).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
