//! `dedup2d import DIR`: bulk-adds a folder of drawings to a tenant's library
//! through the HTTP API, as any other client would. It owns the folder walk,
//! the choice of what to upload, the uploads with their retries, the progress
//! bar and the summary.
//!
//! What goes up: files with a drawing extension ([`EXTENSIONS`], any case)
//! whose bytes (sha256) are neither in the library already nor earlier in
//! the folder; other files are counted as skipped, with the reason. Hidden
//! files and folders (name starting with `.`) are ignored, and so are
//! symlinked folders, so a walk cannot loop. So a second run of the same
//! import adds nothing, and an interrupted one can simply be run again.
//!
//! It never opens a store: the server stays the only writer of a library.
//! The client speaks plain HTTP only (no TLS stack is built in); reach a
//! TLS endpoint through a tunnel such as `kubectl port-forward`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::engine::{EXTENSIONS, sha256_hex};

const PREFIX: &str = "/api/v1/dedup/2d";
/// The largest page `GET /index` serves.
const PAGE: u32 = 1000;
/// Tries of one request, the first included, while the server says "later".
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A longer `Retry-After` is cut to this: an import waits, it does not stall.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Generous: the server reads and fingerprints a file before it answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Below the server's default header timeout (10 s), so the client drops an
/// idle connection before the server closes it under a new request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// Base URL of the server, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// `None` for a keyless (local) server.
    pub api_key: Option<String>,
    /// Uploads in flight at once.
    pub parallel: usize,
    pub recursive: bool,
    /// Decide what would go up, upload nothing.
    pub dry_run: bool,
    /// A progress bar on stderr.
    pub progress: bool,
}

/// What an import did. `dry_run` lists what would be added under `added`,
/// without drawing ids.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub added: Vec<Added>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// Drawings never tried because the run stopped early.
    pub not_started: Vec<String>,
    /// Why the run stopped before the end, if it did.
    pub stopped: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Added {
    /// The path relative to the imported folder.
    pub file: String,
    pub file_hash: String,
    pub drawing_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub file: String,
    pub kind: SkipKind,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    NotADrawing,
    InLibrary,
    InFolder,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub file: String,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The server's stable error code, when it gave one.
    pub error: Option<String>,
    pub reason: String,
}

impl Summary {
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.stopped.is_none()
    }

    /// Ok when every drawing went in or was rightly skipped; otherwise an
    /// error naming what did not, for the exit code.
    pub fn outcome(&self) -> anyhow::Result<()> {
        if self.is_complete() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !self.failed.is_empty() {
            parts.push(format!("{} failed", self.failed.len()));
        }
        if !self.not_started.is_empty() {
            parts.push(format!("{} not started", self.not_started.len()));
        }
        match &self.stopped {
            Some(reason) => bail!("import incomplete ({}): {reason}", parts.join(", ")),
            None => bail!("import incomplete: {}", parts.join(", ")),
        }
    }

    pub fn count(&self, kind: SkipKind) -> usize {
        self.skipped.iter().filter(|s| s.kind == kind).count()
    }

    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["counts"] = serde_json::json!({
            "added": self.added.len(),
            "skipped": self.skipped.len(),
            "failed": self.failed.len(),
            "not_started": self.not_started.len(),
        });
        value
    }

    /// The human summary: counts, skips by reason, then each failure.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run { "would add" } else { "added" };
        let _ = write!(out, "{verb} {}, skipped {}", self.added.len(), self.skipped.len());
        let reasons = self.skip_reasons();
        if !reasons.is_empty() {
            let _ = write!(out, " ({reasons})");
        }
        let _ = writeln!(out, ", failed {}", self.failed.len());
        for skip in self.skipped.iter().filter(|s| s.kind == SkipKind::InFolder) {
            let _ = writeln!(out, "  skipped {}: {}", skip.file, skip.reason);
        }
        for failure in &self.failed {
            let _ = writeln!(out, "  failed {}: {}", failure.file, failure.reason);
        }
        if let Some(reason) = &self.stopped {
            let _ = writeln!(out, "stopped early, {} not started: {reason}", self.not_started.len());
        }
        out
    }

    fn skip_reasons(&self) -> String {
        let named = [
            (SkipKind::InLibrary, "already in the library"),
            (SkipKind::InFolder, "same bytes as another file here"),
            (SkipKind::NotADrawing, "not a drawing extension"),
        ];
        let parts: Vec<String> = named
            .iter()
            .map(|(kind, name)| (self.count(*kind), name))
            .filter(|(n, _)| *n > 0)
            .map(|(n, name)| format!("{n} {name}"))
            .collect();
        parts.join(", ")
    }

    fn skip(&mut self, file: &str, kind: SkipKind, reason: String) {
        self.skipped.push(Skipped {
            file: file.to_string(),
            kind,
            reason,
        });
    }

    /// Uploads finish in any order; the summary lists files by name.
    fn sort(&mut self) {
        self.added.sort_by(|a, b| a.file.cmp(&b.file));
        self.skipped.sort_by(|a, b| a.file.cmp(&b.file));
        self.failed.sort_by(|a, b| a.file.cmp(&b.file));
        self.not_started.sort();
    }

    fn stop(&mut self, reason: String) {
        self.stopped.get_or_insert(reason);
    }
}

/// Runs `import` and prints its summary on stdout; fails (after printing)
/// when a drawing failed or the run stopped early.
pub async fn command(options: &Options, json: bool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let summary = run(options, shutdown).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary.to_json())?);
    } else {
        print!("{}", summary.text());
    }
    summary.outcome()
}

/// One import. Errors only for bad input (folder, URL, key); everything
/// that happens after the first request is told in the [`Summary`].
pub async fn run(options: &Options, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let client = Client::new(&options.url, options.api_key.as_deref())?;
    let dir = options.dir.clone();
    let recursive = options.recursive;
    let found = tokio::task::spawn_blocking(move || walk(&dir, recursive)).await??;
    let mut summary = Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let drawings = sort_out(found, &mut summary);
    let stop = shutdown.child_token();
    let library = match client.library_hashes(&stop).await {
        Ok(hashes) => hashes,
        Err(e) => {
            summary.stop(format!("cannot list the library at {}: {e}", client.base));
            summary.not_started = drawings.into_iter().map(|f| f.shown).collect();
            return Ok(summary);
        }
    };
    let bar = progress_bar(options.progress, drawings.len(), "hashing");
    let hashed = hash_all(drawings, bar.clone(), stop.clone()).await?;
    let todo = plan(hashed, &library, &mut summary);
    bar.finish_and_clear();
    if options.dry_run {
        summary.added = todo.into_iter().map(Candidate::would_add).collect();
    } else {
        let bar = progress_bar(options.progress, todo.len(), "uploading");
        upload_all(&client, todo, options.parallel.max(1), &bar, &stop, &mut summary).await;
        bar.finish_and_clear();
    }
    if shutdown.is_cancelled() {
        summary.stop("interrupted".into());
    }
    summary.sort();
    Ok(summary)
}

/// A file of the folder: where it is and how the summary names it.
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    shown: String,
}

/// The files under `dir` (its subfolders too when `recursive`), by path.
fn walk(dir: &Path, recursive: bool) -> anyhow::Result<Vec<Found>> {
    let mut found = Vec::new();
    walk_into(dir, dir, recursive, &mut found)?;
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn walk_into(root: &Path, dir: &Path, recursive: bool, found: &mut Vec<Found>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() && recursive {
            walk_into(root, &path, recursive, found)?;
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            let shown = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            found.push(Found { path, shown });
        }
    }
    Ok(())
}

pub fn is_drawing_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Keeps the drawings; every other file is a skip.
fn sort_out(found: Vec<Found>, summary: &mut Summary) -> Vec<Found> {
    let (drawings, others): (Vec<_>, Vec<_>) = found.into_iter().partition(|f| is_drawing_name(&f.path));
    for other in others {
        summary.skip(&other.shown, SkipKind::NotADrawing, "not a drawing extension".into());
    }
    drawings
}

/// A file and its sha256: `None` when the run stopped before it.
type Hashed = (Found, Option<std::io::Result<String>>);

/// Hashes in folder order, so "the first copy" is well defined. Stops at
/// cancellation; what was not hashed is returned as `None`.
async fn hash_all(files: Vec<Found>, bar: ProgressBar, stop: CancellationToken) -> anyhow::Result<Vec<Hashed>> {
    let hashed = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|file| {
                if stop.is_cancelled() {
                    return (file, None);
                }
                let hash = std::fs::read(&file.path).map(|bytes| sha256_hex(&bytes));
                bar.inc(1);
                (file, Some(hash))
            })
            .collect()
    })
    .await?;
    Ok(hashed)
}

/// A drawing to upload.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    shown: String,
    hash: String,
}

impl Candidate {
    fn would_add(self) -> Added {
        Added {
            file: self.shown,
            file_hash: self.hash,
            drawing_id: None,
        }
    }
}

/// Decides each hashed file: unreadable → failed; bytes in the library or
/// seen earlier in the folder → skipped; otherwise it goes up.
fn plan(hashed: Vec<Hashed>, library: &HashSet<String>, summary: &mut Summary) -> Vec<Candidate> {
    let mut first_copy: HashMap<String, String> = HashMap::new();
    let mut todo = Vec::new();
    for (file, hash) in hashed {
        let hash = match hash {
            None => {
                summary.not_started.push(file.shown);
                continue;
            }
            Some(Err(e)) => {
                summary.failed.push(local_failure(&file.shown, &e));
                continue;
            }
            Some(Ok(hash)) => hash,
        };
        if library.contains(&hash) {
            summary.skip(&file.shown, SkipKind::InLibrary, "already in the library".into());
        } else if let Some(first) = first_copy.get(&hash) {
            summary.skip(&file.shown, SkipKind::InFolder, format!("same bytes as {first}"));
        } else {
            first_copy.insert(hash.clone(), file.shown.clone());
            todo.push(Candidate {
                path: file.path,
                shown: file.shown,
                hash,
            });
        }
    }
    todo
}

fn local_failure(file: &str, error: &std::io::Error) -> Failed {
    Failed {
        file: file.to_string(),
        status: None,
        error: None,
        reason: format!("cannot read the file: {error}"),
    }
}

/// A bar on stderr, or nothing when `shown` is false (not a terminal, or
/// `--json`); `migrate-payloads` draws the same.
pub(crate) fn progress_bar(shown: bool, len: usize, prefix: &'static str) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {elapsed} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len as u64).with_style(style).with_prefix(prefix)
}

enum Outcome {
    Added(Added),
    /// With the reason to stop the whole run, when later uploads would fail
    /// the same way.
    Failed(Failed, Option<String>),
    NotStarted(String),
}

/// Uploads `parallel` at a time. Once `stop` is cancelled (Ctrl-C, or the
/// server is gone or refuses the key) no new upload starts; those in flight
/// finish.
async fn upload_all(
    client: &Client,
    todo: Vec<Candidate>,
    parallel: usize,
    bar: &ProgressBar,
    stop: &CancellationToken,
    summary: &mut Summary,
) {
    let mut outcomes = futures_util::stream::iter(todo)
        .map(|candidate| upload_one(client, candidate, stop))
        .buffer_unordered(parallel);
    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Outcome::Added(added) => summary.added.push(added),
            Outcome::NotStarted(file) => summary.not_started.push(file),
            Outcome::Failed(failed, stop_reason) => {
                bar.println(format!("failed {}: {}", failed.file, failed.reason));
                if let Some(reason) = stop_reason {
                    summary.stop(reason);
                    stop.cancel();
                }
                summary.failed.push(failed);
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "added {}, failed {}",
            summary.added.len(),
            summary.failed.len()
        ));
    }
}

async fn upload_one(client: &Client, candidate: Candidate, stop: &CancellationToken) -> Outcome {
    if stop.is_cancelled() {
        return Outcome::NotStarted(candidate.shown);
    }
    let bytes = match tokio::fs::read(&candidate.path).await {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::Failed(local_failure(&candidate.shown, &e), None),
    };
    let name = candidate
        .path
        .file_name()
        .map_or_else(|| candidate.shown.clone(), |n| n.to_string_lossy().into_owned());
    match client.add(bytes.into(), &name, stop).await {
        Ok(reply) => Outcome::Added(Added {
            file: candidate.shown,
            file_hash: reply.file_hash,
            drawing_id: Some(reply.drawing_id),
        }),
        Err(error) => {
            let stop_reason = error
                .stops_run()
                .then(|| format!("{} at {}: {error}", error.what(), client.base));
            Outcome::Failed(error.failure(&candidate.shown), stop_reason)
        }
    }
}

/// Why a request did not get a successful answer.
#[derive(Debug, Error)]
enum CallError {
    /// The server answered with an error status.
    #[error("{} {}: {message}", status.as_u16(), code.as_deref().or(status.canonical_reason()).unwrap_or(""))]
    Status {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    /// No answer: refused, timed out, dropped.
    #[error("{message}")]
    Transport { connect: bool, message: String },
    /// An answer that is not what dedup2d sends: the URL is probably wrong.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl CallError {
    /// Errors every later request would get too: the server is gone, or
    /// it refuses the key.
    fn stops_run(&self) -> bool {
        match self {
            CallError::Status { status, .. } => *status == StatusCode::UNAUTHORIZED,
            CallError::Transport { connect, .. } => *connect,
            CallError::Unexpected(_) => false,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            CallError::Status { .. } => "the server refused the API key",
            _ => "cannot reach the server",
        }
    }

    fn failure(&self, file: &str) -> Failed {
        let (status, error) = match self {
            CallError::Status { status, code, .. } => (Some(status.as_u16()), code.clone()),
            _ => (None, None),
        };
        Failed {
            file: file.to_string(),
            status,
            error,
            reason: self.to_string(),
        }
    }

    fn transport(error: &reqwest::Error) -> CallError {
        let cause = root_cause(error);
        let message = if error.is_timeout() {
            "timed out".to_string()
        } else if error.is_connect() {
            format!("cannot connect: {cause}")
        } else {
            cause
        };
        CallError::Transport {
            connect: error.is_connect(),
            message,
        }
    }
}

/// reqwest's own message names the layer ("error sending request for url
/// …"); what a user can act on ("Connection refused") is the innermost cause.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[derive(Debug, Deserialize)]
struct IndexPage {
    total: u64,
    drawings: Vec<IndexEntry>,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    file_hash: String,
}

#[derive(Debug, Deserialize)]
struct AddReply {
    drawing_id: String,
    file_hash: String,
}

/// The API as this command uses it: listing the library and adding a
/// drawing, each with retries.
struct Client {
    http: reqwest::Client,
    /// `<url>/api/v1/dedup/2d`.
    base: String,
}

impl Client {
    fn new(url: &str, api_key: Option<&str>) -> anyhow::Result<Client> {
        let base = api_base(url)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(key).context("the API key is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("dedup2d-import/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()?;
        Ok(Client { http, base })
    }

    async fn library_hashes(&self, stop: &CancellationToken) -> Result<HashSet<String>, CallError> {
        let mut hashes = HashSet::new();
        let mut offset = 0u64;
        loop {
            let url = format!("{}/index", self.base);
            let request = || {
                self.http
                    .get(&url)
                    .query(&[("limit", u64::from(PAGE)), ("offset", offset)])
            };
            let response = self.send(request, true, stop).await?;
            let page: IndexPage = response.json().await.map_err(|e| unexpected(&e))?;
            let listed = page.drawings.len() as u64;
            hashes.extend(page.drawings.into_iter().map(|d| d.file_hash));
            offset += listed;
            if listed == 0 || offset >= page.total {
                return Ok(hashes);
            }
        }
    }

    async fn add(&self, bytes: bytes::Bytes, name: &str, stop: &CancellationToken) -> Result<AddReply, CallError> {
        let url = format!("{}/index/add", self.base);
        let request = || {
            let part = Part::stream_with_length(bytes.clone(), bytes.len() as u64).file_name(name.to_string());
            self.http.post(&url).multipart(Form::new().part("file", part))
        };
        let response = self.send(request, false, stop).await?;
        response.json().await.map_err(|e| unexpected(&e))
    }

    /// Sends until an answer that is not "later", at most [`ATTEMPTS`]
    /// times. A request that may have reached the server is repeated only
    /// when `idempotent`; a refused connection never reached it.
    async fn send(
        &self,
        request: impl Fn() -> RequestBuilder,
        idempotent: bool,
        stop: &CancellationToken,
    ) -> Result<Response, CallError> {
        let mut attempt = 1;
        loop {
            let (result, wait) = match request().send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let wait = retry_wait(response.status(), response.headers(), attempt);
                    (status_error(response).await, wait)
                }
                Err(e) => {
                    let retry = e.is_connect() || idempotent;
                    (CallError::transport(&e), retry.then(|| backoff(attempt)))
                }
            };
            match wait.filter(|_| attempt < ATTEMPTS) {
                None => return Err(result),
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return Err(result),
                    }
                }
            }
            attempt += 1;
        }
    }
}

/// `<url>/api/v1/dedup/2d`; a URL that already ends with the prefix is
/// taken as it is.
fn api_base(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => bail!("--url {url}: this build speaks plain HTTP only; use an http:// address or a tunnel"),
        other => bail!("--url {url}: expected http://, not {other}://"),
    }
    let trimmed = url.trim_end_matches('/');
    Ok(if trimmed.ends_with(PREFIX) {
        trimmed.to_string()
    } else {
        format!("{trimmed}{PREFIX}")
    })
}

/// How long to wait before trying again, or `None` for an answer that
/// another try would not change. Only 408, 429 and 503 say "later".
fn retry_wait(status: StatusCode, headers: &HeaderMap, attempt: u32) -> Option<Duration> {
    let later = [
        StatusCode::REQUEST_TIMEOUT,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ];
    if !later.contains(&status) {
        return None;
    }
    let asked = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    Some(asked.map_or_else(|| backoff(attempt), |wait| wait.min(MAX_RETRY_AFTER)))
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); a
/// date in the past means now.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// 0.5 s, 1 s, 2 s, … up to [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

async fn status_error(response: Response) -> CallError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let (code, message) = error_detail(&body);
    CallError::Status { status, code, message }
}

/// The code and message of an error body: `{"detail": {"error", "message"}}`,
/// or `{"detail": "text"}` for auth errors; anything else (a proxy's page)
/// is shown shortened.
pub fn error_detail(body: &str) -> (Option<String>, String) {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").cloned());
    match detail {
        Some(Value::String(message)) => (None, message),
        Some(Value::Object(fields)) => {
            let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string);
            (text("error"), text("message").unwrap_or_default())
        }
        _ => (None, shorten(body.trim(), 200)),
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn unexpected(error: &reqwest::Error) -> CallError {
    CallError::Unexpected(root_cause(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn only_later_answers_are_retried_and_retry_after_is_bounded() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_wait(StatusCode::UNSUPPORTED_MEDIA_TYPE, &headers, 1), None);
        assert_eq!(retry_wait(StatusCode::CONFLICT, &headers, 1), None);
        assert_eq!(retry_wait(StatusCode::INTERNAL_SERVER_ERROR, &headers, 1), None);
        assert_eq!(
            retry_wait(StatusCode::SERVICE_UNAVAILABLE, &headers, 2),
            Some(Duration::from_secs(1))
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        assert_eq!(
            retry_wait(StatusCode::TOO_MANY_REQUESTS, &headers, 1),
            Some(Duration::from_secs(5))
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(
            retry_wait(StatusCode::REQUEST_TIMEOUT, &headers, 1),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn drawing_extensions_in_any_case() {
        for name in [
            "a.dxf", "b.PNG", "c.Jpeg", "d.tif", "e.TIFF", "f.bmp", "g.webp", "h.gif", "i.jpg",
        ] {
            assert!(is_drawing_name(Path::new(name)), "{name}");
        }
        for name in ["a.dwg", "b.pdf", "c.png.txt", "png", "d"] {
            assert!(!is_drawing_name(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        let coded = r#"{"detail":{"error":"UNSUPPORTED_FORMAT","message":"not a drawing"}}"#;
        assert_eq!(
            error_detail(coded),
            (Some("UNSUPPORTED_FORMAT".into()), "not a drawing".into())
        );
        assert_eq!(
            error_detail(r#"{"detail":"Invalid API Key"}"#),
            (None, "Invalid API Key".into())
        );
        let page = format!("<html>{}</html>", "x".repeat(500));
        let (code, message) = error_detail(&page);
        assert_eq!((code, message.chars().count()), (None, 201));
    }

    #[test]
    fn the_url_gets_the_api_prefix_once() {
        let base = "http://127.0.0.1:8000/api/v1/dedup/2d";
        assert_eq!(api_base("http://127.0.0.1:8000").unwrap(), base);
        assert_eq!(api_base("http://127.0.0.1:8000/").unwrap(), base);
        assert_eq!(api_base(base).unwrap(), base);
        assert!(
            api_base("https://example.test")
                .unwrap_err()
                .to_string()
                .contains("plain HTTP")
        );
        assert!(api_base("127.0.0.1:8000").is_err());
    }

    #[test]
    fn the_plan_skips_library_bytes_and_second_copies() {
        let found = |name: &str| Found {
            path: PathBuf::from(name),
            shown: name.to_string(),
        };
        let hashed = vec![
            (found("a.png"), Some(Ok("h1".to_string()))),
            (found("b.png"), Some(Ok("h2".to_string()))),
            (found("c.png"), Some(Ok("h1".to_string()))),
            (found("d.png"), Some(Err(std::io::Error::other("gone")))),
            (found("e.png"), None),
        ];
        let library = HashSet::from(["h2".to_string()]);
        let mut summary = Summary::default();
        let todo = plan(hashed, &library, &mut summary);
        assert_eq!(todo.iter().map(|c| c.shown.as_str()).collect::<Vec<_>>(), ["a.png"]);
        assert_eq!(summary.skipped[0].kind, SkipKind::InLibrary);
        assert_eq!(summary.skipped[1].reason, "same bytes as a.png");
        assert_eq!(summary.failed[0].file, "d.png");
        assert_eq!(summary.not_started, ["e.png"]);
    }
}
