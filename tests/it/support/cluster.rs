//! The distributed mode for a test: a real redis-server, a shared data dir
//! (the "shared disk"), and API and worker processes on it, in-process or as
//! the built binary.

use std::path::PathBuf;

use dedup2d::queue::{Keys, Redis, RedisJobs, Timing};
use fred::prelude::*;

use super::TestServer;
use super::process::{Served, free_port};
use super::redis::RedisServer;

pub struct Cluster {
    pub redis: RedisServer,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        Cluster {
            redis: RedisServer::start().await,
            data_dir: dir.path().join("data"),
            _dir: dir,
        }
    }

    fn env<'a>(&'a self, url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("DEDUP2D_ASYNC_BACKEND", "redis"), ("DEDUP2D_REDIS_URL", url)];
        env.extend_from_slice(extra);
        env
    }

    /// `serve` in this test process.
    pub async fn api(&self, extra: &[(&str, &str)]) -> TestServer {
        let url = self.redis.url();
        TestServer::start_in(&self.data_dir, &self.env(&url, extra)).await
    }

    /// `serve` as its own process.
    pub async fn api_process(&self, extra: &[(&str, &str)]) -> (Served, TestServer) {
        let url = self.redis.url();
        let served = Served::start(&self.data_dir, free_port(), &self.env(&url, extra)).await;
        let view = TestServer::attach(&served.base, &self.data_dir);
        (served, view)
    }

    /// `work` as its own process; its `base` serves `/metrics`.
    pub async fn worker(&self, extra: &[(&str, &str)]) -> Served {
        let url = self.redis.url();
        Served::work(&self.data_dir, free_port(), &self.env(&url, extra)).await
    }

    /// The job store as `serve` and `work` see it (default prefix and
    /// queue), for tests that play another producer or a worker.
    pub async fn queue(&self) -> RedisJobs {
        let redis = Redis::connect(&self.redis.url()).await.expect("redis");
        let timing = Timing {
            lease_seconds: 20.0,
            ttl_seconds: 3600,
        };
        redis.jobs(Keys::new("dedup2d", "dedup2d:queue"), timing)
    }

    pub async fn redis_cli(&self) -> Client {
        self.redis.cli().await
    }

    /// Jobs holding capacity (`{p}:active`).
    pub async fn active(&self) -> u64 {
        self.redis_cli().await.scard("dedup2d:active").await.expect("SCARD")
    }
}
