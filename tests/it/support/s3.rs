//! A real S3 protocol server in the test process: `s3s` serving `s3s-fs`
//! (a bucket is a directory), which checks every request's SigV4
//! signature. One bucket, on a free loopback port, stopped when dropped.

use dedup2d::config::S3Config;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const ACCESS_KEY: &str = "dedup2d-test";
pub const SECRET_KEY: &str = "dedup2d-test-secret";
pub const BUCKET: &str = "drawings";

pub struct S3Server {
    pub endpoint: String,
    /// The server's files: `<dir>/<bucket>/<key>`.
    pub dir: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("s3 dir");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket dir");
        let mut builder = S3ServiceBuilder::new(s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs"));
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server { endpoint, dir, accept }
    }

    /// The environment that points `serve` or `work` at this server.
    pub fn env<'a>(&'a self, secret_key: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("DEDUP2D_FILE_STORAGE", "s3"),
            ("DEDUP2D_S3_BUCKET", BUCKET),
            ("DEDUP2D_S3_ENDPOINT", self.endpoint.as_str()),
            ("DEDUP2D_S3_ACCESS_KEY", ACCESS_KEY),
            ("DEDUP2D_S3_SECRET_KEY", secret_key),
        ]
    }

    /// Keys stored under `prefix`, as the server holds them.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else if let Ok(key) = path.strip_prefix(root) {
                    out.push(key.to_string_lossy().into_owned());
                }
            }
        }
        let root = self.dir.path().join(BUCKET);
        let mut keys = Vec::new();
        walk(&root.join(prefix), &root, &mut keys);
        keys.sort();
        keys
    }

    /// What `DEDUP2D_FILE_STORAGE=s3` with this server's address gives.
    pub fn config(&self, bucket: &str, secret_key: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            prefix: "uploads".into(),
            library_prefix: "library".into(),
            access_key: Some(ACCESS_KEY.into()),
            secret_key: Some(secret_key.into()),
            session_token: None,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
