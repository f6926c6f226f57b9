//! A real `redis-server` for a test: its own port and directory, AOF on (as
//! production runs it), killed when the test ends. `.ci/run` installs it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::free_port;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("redis dir"),
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A client for the checks an operator makes with `redis-cli`.
    pub async fn cli(&self) -> fred::prelude::Client {
        use fred::prelude::*;
        let client = Client::new(Config::from_url(&self.url()).expect("url"), None, None, None);
        client.init().await.expect("connect to the test redis");
        client
    }

    /// Kills the server (SIGKILL: nothing flushed beyond the AOF) and starts
    /// it again on the same port and data.
    pub async fn restart(&mut self, down_for: Duration) {
        self.kill();
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }

    /// Kills the server; [`Self::resume`] starts it again on the same data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn resume(&mut self) {
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? `bash .ci/run` installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
