//! Configuration: one typed [`Config`] resolved from four layers,
//! defaults < file (`config/dedup2d.toml` or `--config`) < environment < CLI flags.
//!
//! The loader takes the environment as a map, so tests never touch the process
//! environment, and every value remembers where it came from: `dedup2d config`
//! prints that, and a bad value names its key and source. Nothing here opens a
//! connection or a file other than the config file itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::callback::net::Cidr;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/dedup2d.toml";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Cli(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Cli(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for `{key}` (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("unknown key `{key}` in config file {path}; known keys are listed by `dedup2d config`")]
    UnknownKey { key: String, path: PathBuf },
}

/// One setting: its file key, the environment names that set it (first wins)
/// and its default as text, parsed like any other layer's value.
struct Setting {
    key: &'static str,
    env: &'static [&'static str],
    default: &'static str,
    secret: bool,
}

const fn setting(key: &'static str, env: &'static [&'static str], default: &'static str) -> Setting {
    Setting {
        key,
        env,
        default,
        secret: false,
    }
}

const SETTINGS: &[Setting] = &[
    setting("listen", &["DEDUP2D_LISTEN"], "127.0.0.1:8000"),
    setting("data_dir", &["DEDUP2D_DATA_DIR"], "./data"),
    Setting {
        key: "api_keys",
        env: &["DEDUP2D_API_KEYS", "API_KEYS", "API_KEY"],
        default: "",
        secret: true,
    },
    setting("log", &["DEDUP2D_LOG", "RUST_LOG"], "info"),
    setting("log_format", &["DEDUP2D_LOG_FORMAT"], "text"),
    setting("async_backend", &["DEDUP2D_ASYNC_BACKEND"], "inprocess"),
    setting("async_max_concurrency", &["DEDUP2D_ASYNC_MAX_CONCURRENCY"], "2"),
    setting("async_max_jobs", &["DEDUP2D_ASYNC_MAX_JOBS"], "200"),
    setting("async_ttl_seconds", &["DEDUP2D_ASYNC_TTL_SECONDS"], "3600"),
    setting(
        "async_job_timeout_seconds",
        &["DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS"],
        "300",
    ),
    setting("max_deliveries", &["DEDUP2D_MAX_DELIVERIES"], "5"),
    setting(
        "worker_shutdown_grace_seconds",
        &["DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS"],
        "25",
    ),
    setting(
        "redis_url",
        &["DEDUP2D_REDIS_URL", "REDIS_URL"],
        "redis://127.0.0.1:6379",
    ),
    setting("redis_key_prefix", &["DEDUP2D_REDIS_KEY_PREFIX"], "dedup2d"),
    setting("arq_queue_name", &["DEDUP2D_ARQ_QUEUE_NAME"], "dedup2d:queue"),
    setting("worker_max_jobs", &["DEDUP2D_WORKER_MAX_JOBS"], "10"),
    setting(
        "worker_metrics_listen",
        &["DEDUP2D_WORKER_METRICS_LISTEN"],
        "127.0.0.1:9108",
    ),
    // A job whose worker stopped heartbeating this long is run again.
    setting("lease_seconds", &["DEDUP2D_LEASE_SECONDS"], "20"),
    setting("file_storage", &["DEDUP2D_FILE_STORAGE"], "local"),
    setting("s3_bucket", &["DEDUP2D_S3_BUCKET"], ""),
    // Empty is AWS itself; set for MinIO, Garage or any S3-compatible store.
    setting(
        "s3_endpoint",
        &["DEDUP2D_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        "",
    ),
    setting(
        "s3_region",
        &["DEDUP2D_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
        "us-east-1",
    ),
    setting("s3_prefix", &["DEDUP2D_S3_PREFIX"], "uploads"),
    setting("s3_library_prefix", &["DEDUP2D_S3_LIBRARY_PREFIX"], "library"),
    setting("s3_access_key", &["DEDUP2D_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"], ""),
    Setting {
        key: "s3_secret_key",
        env: &["DEDUP2D_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"],
        default: "",
        secret: true,
    },
    Setting {
        key: "s3_session_token",
        env: &["DEDUP2D_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"],
        default: "",
        secret: true,
    },
    // Empty means `<data_dir>/dedup2d_uploads`, which with the default data dir
    // is the original's `data/dedup2d_uploads`.
    setting("file_storage_dir", &["DEDUP2D_FILE_STORAGE_DIR"], ""),
    setting(
        "file_storage_cleanup_on_finish",
        &["DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH"],
        "1",
    ),
    // `dedup2d gc` deletes unreferenced uploads older than this; 0 turns it off.
    setting(
        "file_storage_retention_seconds",
        &["DEDUP2D_FILE_STORAGE_RETENTION_SECONDS"],
        "3600",
    ),
    setting(
        "job_payload_include_bytes_b64",
        &["DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64"],
        "0",
    ),
    setting(
        "job_payload_bytes_b64_max_bytes",
        &["DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES"],
        "10485760",
    ),
    Setting {
        key: "callback_hmac_secret",
        env: &["DEDUP2D_CALLBACK_HMAC_SECRET"],
        default: "",
        secret: true,
    },
    setting("callback_max_attempts", &["DEDUP2D_CALLBACK_MAX_ATTEMPTS"], "3"),
    setting(
        "callback_backoff_base_seconds",
        &["DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS"],
        "1",
    ),
    setting(
        "callback_backoff_max_seconds",
        &["DEDUP2D_CALLBACK_BACKOFF_MAX_SECONDS"],
        "10",
    ),
    setting("callback_timeout_seconds", &["DEDUP2D_CALLBACK_TIMEOUT_SECONDS"], "10"),
    setting("callback_allow_http", &["DEDUP2D_CALLBACK_ALLOW_HTTP"], "0"),
    // Exact host names; empty allows any host the other rules allow.
    setting("callback_allowlist", &["DEDUP2D_CALLBACK_ALLOWLIST"], ""),
    setting(
        "callback_block_private_networks",
        &["DEDUP2D_CALLBACK_BLOCK_PRIVATE_NETWORKS"],
        "1",
    ),
    // Also resolve the name at submit (sending always checks what it dials).
    setting("callback_resolve_dns", &["DEDUP2D_CALLBACK_RESOLVE_DNS"], "0"),
    setting("callback_blocked_cidrs", &["DEDUP2D_CALLBACK_BLOCKED_CIDRS"], ""),
    setting("callback_allowed_cidrs", &["DEDUP2D_CALLBACK_ALLOWED_CIDRS"], ""),
    // `vision` sends searches to the original's external vision service.
    setting("engine", &["DEDUP2D_ENGINE"], "builtin"),
    setting("vision_url", &["DEDUPCAD_VISION_URL"], ""),
    setting("vision_timeout_seconds", &["DEDUPCAD_VISION_TIMEOUT_SECONDS"], "60"),
    setting("vision_retry_attempts", &["DEDUPCAD_VISION_RETRY_ATTEMPTS"], "2"),
    setting(
        "vision_retry_base_seconds",
        &["DEDUPCAD_VISION_RETRY_BASE_SECONDS"],
        "0.5",
    ),
    setting("vision_retry_max_seconds", &["DEDUPCAD_VISION_RETRY_MAX_SECONDS"], "5"),
    setting("vision_circuit_failures", &["DEDUPCAD_VISION_CIRCUIT_FAILURES"], "5"),
    setting(
        "vision_circuit_recovery_seconds",
        &["DEDUPCAD_VISION_CIRCUIT_RECOVERY_SECONDS"],
        "30",
    ),
    setting(
        "vision_circuit_half_open_calls",
        &["DEDUPCAD_VISION_CIRCUIT_HALF_OPEN_CALLS"],
        "2",
    ),
    setting("max_upload_bytes", &["DEDUP2D_MAX_UPLOAD_BYTES"], "52428800"),
    setting("max_concurrent_uploads", &["DEDUP2D_MAX_CONCURRENT_UPLOADS"], "64"),
    setting(
        "forced_async_file_size_bytes",
        &["DEDUP2D_FORCED_ASYNC_FILE_SIZE_BYTES"],
        "5242880",
    ),
    setting("forced_async_on_precision", &["DEDUP2D_FORCED_ASYNC_ON_PRECISION"], "1"),
    setting(
        "forced_async_on_mode_precise",
        &["DEDUP2D_FORCED_ASYNC_ON_MODE_PRECISE"],
        "1",
    ),
    setting(
        "http_header_timeout_seconds",
        &["DEDUP2D_HTTP_HEADER_TIMEOUT_SECONDS"],
        "10",
    ),
    setting(
        "http_body_timeout_seconds",
        &["DEDUP2D_HTTP_BODY_TIMEOUT_SECONDS"],
        "60",
    ),
    setting("http_max_connections", &["DEDUP2D_HTTP_MAX_CONNECTIONS"], "1024"),
    // Sleeps before each async job runs. It exists so tests and demos can see
    // jobs in `in_progress` (cancel, timeout, shutdown) while exact matching
    // is still instant; leave it at 0 in production.
    setting("job_delay_ms", &["DEDUP2D_JOB_DELAY_MS"], "0"),
];

/// Where uploads and library drawings are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `file_storage_dir` for uploads, `<data_dir>/library` for drawings.
    Local,
    S3(S3Config),
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// `None` is AWS; otherwise e.g. `http://minio:9000` (path-style).
    pub endpoint: Option<String>,
    pub region: String,
    /// Uploads' key prefix (CONTRACT §4).
    pub prefix: String,
    /// Library drawings' key prefix, apart from the uploads'.
    pub library_prefix: String,
    /// `None`: object_store asks the EC2 instance profile.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("library_prefix", &self.library_prefix)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Jobs and libraries in the embedded database, run by `serve` itself.
    InProcess,
    /// Jobs and libraries in Redis, run by `dedup2d work` processes.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration. Fields are typed; `sources` remembers where
/// each came from.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_keys: Vec<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub async_backend: Backend,
    pub async_max_concurrency: usize,
    pub async_max_jobs: u64,
    pub async_ttl: Duration,
    pub async_job_timeout: Duration,
    pub max_deliveries: u32,
    pub worker_shutdown_grace: Duration,
    pub redis_url: String,
    pub redis_key_prefix: String,
    pub arq_queue_name: String,
    pub worker_max_jobs: usize,
    pub worker_metrics_listen: SocketAddr,
    pub lease: Duration,
    pub file_storage: Storage,
    pub file_storage_dir: PathBuf,
    pub file_storage_cleanup_on_finish: bool,
    /// Age below which `dedup2d gc` keeps an unreferenced upload; `None` is
    /// off (CONTRACT §4: 0).
    pub file_storage_retention: Option<Duration>,
    /// Seed 003's rolling upgrade: also put the upload in the payload.
    pub job_payload_include_bytes_b64: bool,
    pub job_payload_bytes_b64_max_bytes: u64,
    pub callback_hmac_secret: Option<String>,
    pub callback_max_attempts: u32,
    pub callback_backoff_base: Duration,
    pub callback_backoff_max: Duration,
    pub callback_timeout: Duration,
    pub callback_allow_http: bool,
    pub callback_allowlist: Vec<String>,
    pub callback_block_private_networks: bool,
    pub callback_resolve_dns: bool,
    pub callback_blocked_cidrs: Vec<Cidr>,
    pub callback_allowed_cidrs: Vec<Cidr>,
    /// The vision service's base URL when `engine = vision`; `None` runs
    /// the built-in engine.
    pub vision_url: Option<String>,
    pub vision_timeout: Duration,
    pub vision_retry_attempts: u32,
    pub vision_retry_base: Duration,
    pub vision_retry_max: Duration,
    pub vision_circuit_failures: u32,
    pub vision_circuit_recovery: Duration,
    pub vision_circuit_half_open_calls: u32,
    pub max_upload_bytes: u64,
    pub max_concurrent_uploads: usize,
    pub forced_async_file_size_bytes: u64,
    pub forced_async_on_precision: bool,
    pub forced_async_on_mode_precise: bool,
    pub http_header_timeout: Duration,
    pub http_body_timeout: Duration,
    pub http_max_connections: usize,
    pub job_delay: Duration,
    values: BTreeMap<&'static str, (String, Source)>,
}

/// Inputs to [`Config::load`]: everything outside the process that can set a value.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config FILE`; when absent, [`DEFAULT_CONFIG_FILE`] is read if present.
    pub file: Option<PathBuf>,
    pub env: HashMap<String, String>,
    /// `(key, flag name, value)` from the command line.
    pub cli: Vec<(&'static str, &'static str, String)>,
}

impl Sources {
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Self {
        Sources {
            env: env.into_iter().collect(),
            ..Sources::default()
        }
    }
}

impl Config {
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut values: BTreeMap<&'static str, (String, Source)> = SETTINGS
            .iter()
            .map(|s| (s.key, (s.default.to_string(), Source::Default)))
            .collect();
        let file = sources.file.clone().or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            default.exists().then_some(default)
        });
        if let Some(path) = file {
            for (key, value) in read_file(&path)? {
                values.insert(key, (value, Source::File(path.clone())));
            }
        }
        for s in SETTINGS {
            if let Some((name, value)) = s.env.iter().find_map(|name| sources.env.get(*name).map(|v| (name, v))) {
                values.insert(s.key, (value.clone(), Source::Env(name.to_string())));
            }
        }
        for (key, flag, value) in &sources.cli {
            values.insert(key, (value.clone(), Source::Cli(flag.to_string())));
        }
        Config::from_values(values)
    }

    fn from_values(values: BTreeMap<&'static str, (String, Source)>) -> Result<Config, ConfigError> {
        let v = Values(&values);
        let data_dir: PathBuf = v.parse("data_dir")?;
        let file_storage_dir = match v.raw("file_storage_dir") {
            "" => data_dir.join("dedup2d_uploads"),
            dir => PathBuf::from(dir),
        };
        v.apart_from_library(&file_storage_dir, &data_dir)?;
        let config = Config {
            listen: v.parse("listen")?,
            api_keys: v.csv("api_keys"),
            log: v.log_filter("log")?,
            log_format: v.one_of("log_format", &[("text", LogFormat::Text), ("json", LogFormat::Json)])?,
            async_backend: v.one_of(
                "async_backend",
                &[("inprocess", Backend::InProcess), ("redis", Backend::Redis)],
            )?,
            async_max_concurrency: v.in_range("async_max_concurrency", 1, 256)?,
            async_max_jobs: v.in_range("async_max_jobs", 1, 100_000_000)?,
            async_ttl: v.seconds("async_ttl_seconds", 1)?,
            async_job_timeout: v.seconds("async_job_timeout_seconds", 1)?,
            max_deliveries: v.in_range("max_deliveries", 1, 1000)?,
            worker_shutdown_grace: v.seconds("worker_shutdown_grace_seconds", 0)?,
            redis_url: v.redis_url("redis_url")?,
            redis_key_prefix: v.non_empty("redis_key_prefix")?,
            arq_queue_name: v.non_empty("arq_queue_name")?,
            worker_max_jobs: v.in_range("worker_max_jobs", 1, 1024)?,
            worker_metrics_listen: v.parse("worker_metrics_listen")?,
            lease: v.seconds("lease_seconds", 2)?,
            file_storage: v.storage()?,
            file_storage_dir,
            file_storage_cleanup_on_finish: v.cleanup_on_finish()?,
            file_storage_retention: v.retention()?,
            job_payload_include_bytes_b64: v.flag("job_payload_include_bytes_b64")?,
            job_payload_bytes_b64_max_bytes: v.in_range("job_payload_bytes_b64_max_bytes", 0, 512 << 20)?,
            callback_hmac_secret: Some(v.raw("callback_hmac_secret").to_string()).filter(|s| !s.is_empty()),
            callback_max_attempts: v.in_range("callback_max_attempts", 1, 20)?,
            callback_backoff_base: v.fractional_seconds("callback_backoff_base_seconds", 0.01, 3600.0)?,
            callback_backoff_max: v.fractional_seconds("callback_backoff_max_seconds", 0.01, 86400.0)?,
            callback_timeout: v.fractional_seconds("callback_timeout_seconds", 0.1, 300.0)?,
            callback_allow_http: v.flag("callback_allow_http")?,
            callback_allowlist: v.csv("callback_allowlist"),
            callback_block_private_networks: v.flag("callback_block_private_networks")?,
            callback_resolve_dns: v.flag("callback_resolve_dns")?,
            callback_blocked_cidrs: v.cidrs("callback_blocked_cidrs")?,
            callback_allowed_cidrs: v.cidrs("callback_allowed_cidrs")?,
            vision_url: v.vision_url()?,
            vision_timeout: v.fractional_seconds("vision_timeout_seconds", 0.1, 600.0)?,
            vision_retry_attempts: v.in_range("vision_retry_attempts", 1, 10)?,
            vision_retry_base: v.fractional_seconds("vision_retry_base_seconds", 0.0, 60.0)?,
            vision_retry_max: v.fractional_seconds("vision_retry_max_seconds", 0.0, 600.0)?,
            vision_circuit_failures: v.in_range("vision_circuit_failures", 1, 1000)?,
            vision_circuit_recovery: v.fractional_seconds("vision_circuit_recovery_seconds", 0.1, 3600.0)?,
            vision_circuit_half_open_calls: v.in_range("vision_circuit_half_open_calls", 1, 100)?,
            max_upload_bytes: v.in_range("max_upload_bytes", 1, 4 << 30)?,
            max_concurrent_uploads: v.in_range("max_concurrent_uploads", 1, 100_000)?,
            forced_async_file_size_bytes: v.parse("forced_async_file_size_bytes")?,
            forced_async_on_precision: v.flag("forced_async_on_precision")?,
            forced_async_on_mode_precise: v.flag("forced_async_on_mode_precise")?,
            http_header_timeout: v.seconds("http_header_timeout_seconds", 1)?,
            http_body_timeout: v.seconds("http_body_timeout_seconds", 1)?,
            http_max_connections: v.in_range("http_max_connections", 1, 1_000_000)?,
            job_delay: Duration::from_millis(v.parse("job_delay_ms")?),
            data_dir,
            values: BTreeMap::new(),
        };
        Ok(Config { values, ..config })
    }

    /// The configuration that an empty environment, no file and no flags give.
    pub fn defaults() -> Config {
        let values = SETTINGS
            .iter()
            .map(|s| (s.key, (s.default.to_string(), Source::Default)))
            .collect();
        Config::from_values(values).expect("built-in defaults are valid")
    }

    /// `key = value  # source` lines, secrets redacted, for `dedup2d config`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in SETTINGS {
            let (value, source) = &self.values[s.key];
            let shown = if s.key == "api_keys" && !value.is_empty() {
                format!("<{} redacted>", self.api_keys.len())
            } else if s.secret && !value.is_empty() {
                "<redacted>".to_string()
            } else if s.key == "redis_url" {
                redacted_url(value)
            } else {
                value.clone()
            };
            out.push_str(&format!("{} = {:?}  # {}\n", s.key, shown, source));
        }
        out
    }

    pub fn source_of(&self, key: &str) -> Option<&Source> {
        self.values.get(key).map(|(_, source)| source)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("dedup2d.db")
    }
}

/// A URL with its password (`redis://user:secret@host`) replaced, for
/// output and logs.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        _ => url.to_string(),
    }
}

fn read_file(path: &Path) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.to_string()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
            return Err(ConfigError::UnknownKey {
                key,
                path: path.to_path_buf(),
            });
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            toml::Value::Boolean(b) => if b { "1" } else { "0" }.to_string(),
            other => other.to_string(),
        };
        out.push((setting.key, text));
    }
    Ok(out)
}

struct Values<'a>(&'a BTreeMap<&'static str, (String, Source)>);

impl Values<'_> {
    fn raw(&self, key: &'static str) -> &str {
        self.0[key].0.trim()
    }

    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ConfigError {
        let (value, source) = &self.0[key];
        ConfigError::Invalid {
            key,
            value: value.clone(),
            origin: source.clone(),
            reason: reason.into(),
        }
    }

    fn parse<T: FromStr>(&self, key: &'static str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.raw(key)
            .parse()
            .map_err(|e: T::Err| self.invalid(key, e.to_string()))
    }

    fn in_range<T>(&self, key: &'static str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value: T = self.parse(key)?;
        // Written so NaN, which compares false both ways, is refused too.
        if !(value >= min && value <= max) {
            return Err(self.invalid(key, format!("must be between {min} and {max}")));
        }
        Ok(value)
    }

    fn seconds(&self, key: &'static str, min: u64) -> Result<Duration, ConfigError> {
        self.seconds_up_to(key, min, 7 * 24 * 3600)
    }

    fn seconds_up_to(&self, key: &'static str, min: u64, max: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.in_range(key, min, max)?))
    }

    fn flag(&self, key: &'static str) -> Result<bool, ConfigError> {
        match self.raw(key).to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(self.invalid(key, "expected 1/0, true/false, yes/no or on/off")),
        }
    }

    fn one_of<T: Copy>(&self, key: &'static str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let raw = self.raw(key).to_ascii_lowercase();
        choices
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
                self.invalid(key, format!("expected one of {}", names.join(", ")))
            })
    }

    /// 0 is off; otherwise at least a minute, which covers the moment
    /// between an upload being stored and its job admitted, and clock skew
    /// between us and the storage.
    fn retention(&self) -> Result<Option<Duration>, ConfigError> {
        let key = "file_storage_retention_seconds";
        let retention = self.seconds_up_to(key, 0, 365 * 24 * 3600)?;
        if !retention.is_zero() && retention < Duration::from_secs(60) {
            return Err(self.invalid(key, "must be 0 (gc off) or at least 60"));
        }
        Ok(Some(retention).filter(|d| !d.is_zero()))
    }

    fn vision_url(&self) -> Result<Option<String>, ConfigError> {
        let vision = self.one_of("engine", &[("builtin", false), ("vision", true)])?;
        let url = self.raw("vision_url");
        if !vision {
            return Ok(None);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.invalid(
                "vision_url",
                "engine = vision needs the service's http:// or https:// base URL",
            ));
        }
        Ok(Some(url.to_string()))
    }

    fn fractional_seconds(&self, key: &'static str, min: f64, max: f64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs_f64(self.in_range(key, min, max)?))
    }

    fn cidrs(&self, key: &'static str) -> Result<Vec<Cidr>, ConfigError> {
        self.csv(key)
            .iter()
            .map(|text| text.parse().map_err(|e: String| self.invalid(key, e)))
            .collect()
    }

    fn csv(&self, key: &'static str) -> Vec<String> {
        self.raw(key)
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn log_filter(&self, key: &'static str) -> Result<String, ConfigError> {
        let raw = self.raw(key);
        tracing_subscriber::EnvFilter::builder()
            .parse(raw)
            .map_err(|e| self.invalid(key, e.to_string()))?;
        Ok(raw.to_string())
    }

    fn non_empty(&self, key: &'static str) -> Result<String, ConfigError> {
        match self.raw(key) {
            "" => Err(self.invalid(key, "must not be empty")),
            value => Ok(value.to_string()),
        }
    }

    fn redis_url(&self, key: &'static str) -> Result<String, ConfigError> {
        let url = self.raw(key);
        let scheme_known = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        if !scheme_known {
            return Err(self.invalid(key, "expected a redis://host:port[/db] URL"));
        }
        Ok(url.to_string())
    }

    fn storage(&self) -> Result<Storage, ConfigError> {
        match self.raw("file_storage") {
            "local" => Ok(Storage::Local),
            "s3" => Ok(Storage::S3(self.s3()?)),
            _ => Err(self.invalid("file_storage", "expected local or s3")),
        }
    }

    fn s3(&self) -> Result<S3Config, ConfigError> {
        let optional = |key| Some(self.raw(key).to_string()).filter(|v| !v.is_empty());
        let prefix = |key| self.raw(key).trim_matches('/').to_string();
        let (uploads, library) = (prefix("s3_prefix"), prefix("s3_library_prefix"));
        // The garbage collector sweeps the uploads' prefix: the library must
        // not be inside it, nor it inside the library.
        let nested = |a: &str, b: &str| a.is_empty() || b.starts_with(&format!("{a}/")) || a == b;
        if nested(&uploads, &library) || nested(&library, &uploads) {
            return Err(self.invalid("s3_library_prefix", format!("must not overlap s3_prefix `{uploads}`")));
        }
        let endpoint = optional("s3_endpoint");
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(self.invalid("s3_endpoint", "expected an http:// or https:// URL"));
        }
        if optional("s3_access_key").is_some() != optional("s3_secret_key").is_some() {
            return Err(self.invalid(
                "s3_secret_key",
                "set both the access key and the secret key, or neither",
            ));
        }
        Ok(S3Config {
            bucket: self.non_empty("s3_bucket")?,
            endpoint,
            region: self.non_empty("s3_region")?,
            prefix: uploads,
            library_prefix: library,
            access_key: optional("s3_access_key"),
            secret_key: optional("s3_secret_key"),
            session_token: optional("s3_session_token"),
        })
    }

    /// The garbage collector sweeps the uploads directory: it must not hold
    /// the library (`<data_dir>/library`), nor be inside it. Compared as
    /// written, made absolute, since neither needs to exist yet.
    fn apart_from_library(&self, uploads: &Path, data_dir: &Path) -> Result<(), ConfigError> {
        let absolute = |p: &Path| {
            let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            p.components().collect::<PathBuf>()
        };
        let (uploads, library) = (absolute(uploads), absolute(&data_dir.join("library")));
        if library.starts_with(&uploads) || uploads.starts_with(&library) {
            return Err(self.invalid(
                "file_storage_dir",
                format!("must not overlap the library directory {}", library.display()),
            ));
        }
        Ok(())
    }

    /// CONTRACT §4: on by default for local storage, off for S3 (where a
    /// bucket lifecycle rule usually expires uploads).
    fn cleanup_on_finish(&self) -> Result<bool, ConfigError> {
        let (_, source) = &self.0["file_storage_cleanup_on_finish"];
        if *source == Source::Default && self.raw("file_storage") == "s3" {
            return Ok(false);
        }
        self.flag("file_storage_cleanup_on_finish")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(
        file: Option<&str>,
        env_pairs: &[(&str, &str)],
        cli: &[(&'static str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = file.map(|text| {
            let path = dir.path().join("dedup2d.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        Config::load(&Sources {
            file: path,
            env: env(env_pairs),
            cli: cli.iter().map(|(k, v)| (*k, "--flag", v.to_string())).collect(),
        })
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.file_storage_dir, PathBuf::from("./data/dedup2d_uploads"));
        assert_eq!(c.async_max_jobs, 200);
        assert_eq!(c.async_max_concurrency, 2);
        assert_eq!(c.max_upload_bytes, 50 << 20);
        assert_eq!(c.forced_async_file_size_bytes, 5 << 20);
        assert_eq!(c.async_ttl, Duration::from_secs(3600));
        assert_eq!(c.async_job_timeout, Duration::from_secs(300));
        assert!(c.api_keys.is_empty());
        // The distributed mode's (issue #4: a reclaim within 30 s by default).
        assert_eq!(
            (c.redis_key_prefix.as_str(), c.arq_queue_name.as_str()),
            ("dedup2d", "dedup2d:queue")
        );
        assert_eq!((c.worker_max_jobs, c.max_deliveries), (10, 5));
        assert_eq!(c.worker_shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.worker_metrics_listen.to_string(), "127.0.0.1:9108");
        assert!(c.lease <= Duration::from_secs(30), "{:?}", c.lease);
    }

    #[test]
    fn later_layers_win_and_remember_their_source() {
        let c = load(
            Some("listen = \"127.0.0.1:1\"\nasync_max_jobs = 7\nlog_format = \"json\"\n"),
            &[("DEDUP2D_LISTEN", "127.0.0.1:2"), ("DEDUP2D_ASYNC_MAX_JOBS", "9")],
            &[("listen", "127.0.0.1:3")],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3");
        assert_eq!(c.async_max_jobs, 9);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(matches!(c.source_of("listen"), Some(Source::Cli(_))));
        assert_eq!(
            c.source_of("async_max_jobs"),
            Some(&Source::Env("DEDUP2D_ASYNC_MAX_JOBS".into()))
        );
        assert!(matches!(c.source_of("log_format"), Some(Source::File(_))));
        assert_eq!(c.source_of("data_dir"), Some(&Source::Default));
    }

    #[test]
    fn api_keys_come_from_any_of_the_contract_names_and_are_redacted() {
        let c = load(None, &[("API_KEYS", "alpha, beta,,")], &[]).unwrap();
        assert_eq!(c.api_keys, vec!["alpha", "beta"]);
        let c = load(None, &[("API_KEY", "solo"), ("DEDUP2D_API_KEYS", "first")], &[]).unwrap();
        assert_eq!(c.api_keys, vec!["first"]);
        let shown = c.describe();
        assert!(!shown.contains("first"), "{shown}");
        assert!(
            shown.contains("api_keys = \"<1 redacted>\"  # env DEDUP2D_API_KEYS"),
            "{shown}"
        );
        let c = load(Some("api_keys = [\"k1\", \"k2\"]\n"), &[], &[]).unwrap();
        assert_eq!(c.api_keys, vec!["k1", "k2"]);
    }

    #[test]
    fn a_bad_value_names_its_key_and_source() {
        let err = load(None, &[("DEDUP2D_ASYNC_MAX_JOBS", "lots")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("async_max_jobs") && err.contains("env DEDUP2D_ASYNC_MAX_JOBS"),
            "{err}"
        );
        let err = load(Some("max_upload_bytes = 0\n"), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("max_upload_bytes") && err.contains("file "), "{err}");
        let err = load(None, &[], &[("listen", "nowhere")]).unwrap_err().to_string();
        assert!(err.contains("listen") && err.contains("flag --flag"), "{err}");
        let err = load(None, &[("DEDUP2D_LOG", "info,[[")], &[]).unwrap_err().to_string();
        assert!(err.contains("`log`"), "{err}");
        let err = load(None, &[("DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", "maybe")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("file_storage_cleanup_on_finish"), "{err}");
    }

    #[test]
    fn gc_retention_defaults_to_an_hour_and_zero_turns_it_off() {
        assert_eq!(
            Config::defaults().file_storage_retention,
            Some(Duration::from_secs(3600))
        );
        let off = load(None, &[("DEDUP2D_FILE_STORAGE_RETENTION_SECONDS", "0")], &[]).unwrap();
        assert_eq!(off.file_storage_retention, None);
        let flag = load(None, &[], &[("file_storage_retention_seconds", "60")]).unwrap();
        assert_eq!(flag.file_storage_retention, Some(Duration::from_secs(60)));
        let err = load(None, &[], &[("file_storage_retention_seconds", "5")]).unwrap_err();
        assert!(err.to_string().contains("at least 60"), "{err}");
    }

    #[test]
    fn uploads_may_not_share_a_directory_with_the_library() {
        for uploads in ["./data", "./data/library/up", "."] {
            let err = load(None, &[("DEDUP2D_FILE_STORAGE_DIR", uploads)], &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("file_storage_dir") && err.contains("library"),
                "{uploads}: {err}"
            );
        }
        let apart = load(None, &[("DEDUP2D_FILE_STORAGE_DIR", "/srv/uploads")], &[]);
        assert!(apart.is_ok());
    }

    #[test]
    fn s3_reads_its_own_variables_or_the_aws_ones_and_keeps_the_secret_out_of_sight() {
        let err = load(None, &[("DEDUP2D_FILE_STORAGE", "s3")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3_bucket"), "{err}");
        let env = [
            ("DEDUP2D_FILE_STORAGE", "s3"),
            ("DEDUP2D_S3_BUCKET", "drawings"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "hush"),
        ];
        let config = load(None, &env, &[]).unwrap();
        let Storage::S3(s3) = &config.file_storage else {
            panic!("{:?}", config.file_storage)
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!((s3.prefix.as_str(), s3.region.as_str()), ("uploads", "us-east-1"));
        assert_eq!(s3.secret_key.as_deref(), Some("hush"));
        assert!(!config.file_storage_cleanup_on_finish, "off by default on S3");
        let shown = config.describe();
        assert!(
            !shown.contains("hush") && shown.contains("s3_secret_key = \"<redacted>\""),
            "{shown}"
        );
        let overlap = load(
            None,
            &[env[0], env[1], ("DEDUP2D_S3_LIBRARY_PREFIX", "uploads/lib")],
            &[],
        );
        assert!(overlap.unwrap_err().to_string().contains("s3_library_prefix"));
        let half = load(None, &[env[0], env[1], env[3]], &[]);
        assert!(half.unwrap_err().to_string().contains("s3_secret_key"));
    }

    #[test]
    fn the_redis_backend_reads_the_original_variables() {
        let config = load(
            None,
            &[
                ("DEDUP2D_ASYNC_BACKEND", "redis"),
                ("REDIS_URL", "redis://cache:6380/2"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(config.async_backend, Backend::Redis);
        assert_eq!(config.redis_url, "redis://cache:6380/2");
        assert_eq!(config.arq_queue_name, "dedup2d:queue");
        let err = load(None, &[("DEDUP2D_REDIS_URL", "cache:6379")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis_url") && err.contains("env DEDUP2D_REDIS_URL"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_config_file_only_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped = load(Some(&text), &[], &[]).unwrap();
        assert_eq!(shipped.describe(), Config::defaults().describe());
        for s in SETTINGS {
            assert!(
                text.contains(&format!("# {} = ", s.key)),
                "config/dedup2d.toml does not document {}",
                s.key
            );
        }
    }

    #[test]
    fn unknown_file_keys_and_broken_files_are_errors() {
        let err = load(Some("lisen = \"x\"\n"), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("unknown key `lisen`"), "{err}");
        let err = load(Some("listen = \n"), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }
}
