//! `serve` run in-process on a loopback port, with its own data dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dedup2d::config::{Config, Sources};
use reqwest::multipart::Form;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::PREFIX;

pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    /// The key requests send by default; `None` in keyless mode.
    pub key: Option<String>,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A keyless server on a fresh data dir.
    pub async fn start(env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let mut server = TestServer::start_in(&data_dir, env).await;
        server._dir = Some(dir);
        server
    }

    /// A server on `data_dir`, which outlives it (for restart tests).
    pub async fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> TestServer {
        let server = TestServer::launch(data_dir, env).await;
        server.wait_for("/ready").await;
        server
    }

    /// A keyless server that is expected never to be ready (a dependency
    /// is broken): returns once it answers `/health`.
    pub async fn start_unready(env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = TestServer::launch(&dir.path().join("data"), env).await;
        server._dir = Some(dir);
        server.wait_for("/health").await;
        server
    }

    async fn launch(data_dir: &Path, env: &[(&str, &str)]) -> TestServer {
        let mut vars: HashMap<String, String> = HashMap::from([
            ("DEDUP2D_DATA_DIR".into(), data_dir.display().to_string()),
            ("DEDUP2D_LOG".into(), "warn".into()),
        ]);
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::load(&Sources::from_env(vars)).expect("test config");
        let key = config.api_keys.first().cloned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dedup2d::serve::run_on(listener, config, shutdown.clone()));
        TestServer {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::new(),
            key,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            task: Some(task),
            _dir: None,
        }
    }

    /// A view of a server running elsewhere (a `dedup2d serve` process), for
    /// its request helpers; keyless.
    pub fn attach(base: &str, data_dir: &Path) -> TestServer {
        TestServer {
            base: base.to_string(),
            addr: base.trim_start_matches("http://").parse().expect("http://ip:port"),
            client: reqwest::Client::new(),
            key: None,
            data_dir: data_dir.to_path_buf(),
            shutdown: CancellationToken::new(),
            task: None,
            _dir: None,
        }
    }

    /// `/ready` answers once the data dir is open, so a test never races
    /// the server's start-up.
    async fn wait_for(&self, path: &str) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url(path)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("test server on {} never answered {path} with 200", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn api(&self, route: &str) -> String {
        format!("{}{PREFIX}{route}", self.base)
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("dedup2d_uploads")
    }

    /// GET of a path outside the API prefix, as JSON.
    pub async fn root_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    fn authed(&self, request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
        match key.or(self.key.as_deref()) {
            Some(key) => request.header("X-API-Key", key),
            None => request,
        }
    }

    pub async fn get_as(&self, route: &str, key: Option<&str>) -> (u16, Value) {
        decode(self.authed(self.client.get(self.api(route)), key).send().await).await
    }

    pub async fn get(&self, route: &str) -> (u16, Value) {
        self.get_as(route, None).await
    }

    pub async fn post_as(&self, route: &str, form: Option<Form>, key: Option<&str>) -> (u16, Value) {
        let mut request = self.authed(self.client.post(self.api(route)), key);
        if let Some(form) = form {
            request = request.multipart(form);
        }
        decode(request.send().await).await
    }

    pub async fn post(&self, route: &str, form: Option<Form>) -> (u16, Value) {
        self.post_as(route, form, None).await
    }

    pub async fn delete_as(&self, route: &str, key: Option<&str>) -> (u16, Value) {
        decode(self.authed(self.client.delete(self.api(route)), key).send().await).await
    }

    /// Adds a drawing and returns its id.
    pub async fn add(&self, bytes: Vec<u8>, name: &str) -> String {
        let (status, body) = self.post("/index/add", Some(super::form(bytes, name))).await;
        assert_eq!(status, 200, "{body}");
        body["drawing_id"].as_str().expect("drawing_id").to_string()
    }

    /// Submits an async search and returns the job id.
    pub async fn submit(&self, bytes: Vec<u8>) -> String {
        let (status, body) = self
            .post("/search?async=true", Some(super::form(bytes, "query.png")))
            .await;
        assert_eq!(status, 200, "{body}");
        body["job_id"].as_str().expect("job_id").to_string()
    }

    pub async fn wait_terminal(&self, job_id: &str) -> Value {
        super::wait_terminal(&self.client, &self.base, self.key.as_deref(), job_id).await
    }

    pub async fn wait_status(&self, job_id: &str, wanted: &[&str]) -> Value {
        super::wait_status(&self.client, &self.base, self.key.as_deref(), job_id, wanted).await
    }

    /// Signals shutdown and waits for `run_on` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.take().expect("running").await.expect("server task")
    }

    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    pub async fn join(mut self) -> anyhow::Result<()> {
        self.task.take().expect("running").await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn decode(response: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    let response = response.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}
