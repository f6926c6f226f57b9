//! The built `dedup2d` binary run as a child process, for what only a real
//! process shows: exit codes, signals, kill -9.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dedup2d");

/// Runs the binary to completion with a clean environment plus `env`.
pub fn run(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run dedup2d")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub struct Served {
    pub child: Child,
    pub base: String,
}

impl Served {
    /// Starts `dedup2d serve` on `port` and waits until `/health` answers.
    pub async fn start(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Served {
        let listen = format!("127.0.0.1:{port}");
        let args = [
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            &data_dir.display().to_string(),
        ]
        .map(String::from);
        Served::spawn(&args, &listen, data_dir, env).await
    }

    /// Starts `dedup2d work` with its metrics on `port`; `base` is that address.
    pub async fn work(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Served {
        let listen = format!("127.0.0.1:{port}");
        let args = ["work", "--metrics-listen", &listen].map(String::from);
        let data_dir_env = data_dir.display().to_string();
        let mut env = env.to_vec();
        env.push(("DEDUP2D_DATA_DIR", &data_dir_env));
        Served::spawn(&args, &listen, data_dir, &env).await
    }

    async fn spawn(args: &[String], listen: &str, data_dir: &Path, env: &[(&str, &str)]) -> Served {
        let child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("DEDUP2D_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(data_dir.parent().expect("parent"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dedup2d");
        let served = Served {
            child,
            base: format!("http://{listen}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/health", served.base)).send().await
                && r.status() == 200
            {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("dedup2d {} did not come up on {listen}", args[0]);
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// A GET of `path` on this process, as JSON.
    pub async fn json(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON body")
    }

    /// A counter or gauge from this process's `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("dedup2d did not exit within {within:?}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
