//! File storage behind `object_store`: uploads that jobs read, and the drawings
//! of each tenant's library, on the local disk or in an S3 bucket. The only
//! module that builds object paths (CONTRACT §4 key layout and safe names);
//! it knows nothing of jobs or HTTP.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::config::{Config, S3Config, Storage};
use crate::telemetry as t;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("file not found: {0}")]
    NotFound(String),
    #[error("file reference is not valid here: {0}")]
    InvalidRef(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
            e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) => {
                StoreError::Unavailable(format!("the store refused our credentials: {e}"))
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Where a stored file lives, as job payloads carry it (CONTRACT §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum FileRef {
    Local { path: String },
    S3 { bucket: String, key: String },
}

/// What a sweep of the uploads area found at a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `<job_id>/<uuid hex>_<safe name>`: an upload (ours or the original's).
    Upload,
    /// A readiness probe that a crash left behind.
    Probe,
    /// Anything else: not ours, so never deleted.
    Foreign,
}

/// One object of the uploads area, as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Opaque; what [`Files::upload_key`] gives for a reference to it.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
    pub found: Found,
}

/// What [`Files::tidy_uploads`] removed (or, not executing, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tidied {
    pub temp_files: u64,
    pub temp_bytes: u64,
    pub empty_dirs: u64,
}

/// Where an area's objects are, which is also what its `FileRef`s say.
enum Place {
    /// A store rooted at the directory; refs carry absolute paths.
    Local { root: PathBuf },
    /// The bucket's store; refs carry the bucket and the whole key.
    S3 { bucket: String, prefix: String },
}

/// One object store and the part of it that uploads or drawings may use.
struct Area {
    store: Arc<dyn ObjectStore>,
    place: Place,
}

/// Uploads (read by jobs, removed when they finish) and library drawings
/// (kept until deleted) live in separate roots, so a sweep of uploads can
/// never reach a library drawing.
pub struct Files {
    uploads: Area,
    library: Area,
}

/// S3 calls that fail for want of an answer (5xx, timeouts, resets) are
/// retried this way, with object_store's jittered backoff (seed 004);
/// refusals (403, 404) are not.
fn s3_retries() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(30),
    }
}

impl Files {
    pub fn open(config: &Config) -> Result<Files, StoreError> {
        match &config.file_storage {
            Storage::Local => Files::local(&config.file_storage_dir, &config.data_dir.join("library")),
            Storage::S3(s3) => Files::s3(s3),
        }
    }

    pub fn local(uploads_root: &FsPath, library_root: &FsPath) -> Result<Files, StoreError> {
        let files = Files {
            uploads: Area::local(uploads_root)?,
            library: Area::local(library_root)?,
        };
        // The config loader compares the paths as written; `..` and
        // symlinks show only now. gc sweeps the uploads root.
        if let (Place::Local { root: uploads }, Place::Local { root: library }) =
            (&files.uploads.place, &files.library.place)
            && (uploads.starts_with(library) || library.starts_with(uploads))
        {
            return Err(StoreError::Unavailable(format!(
                "the uploads directory {} and the library {} overlap; set DEDUP2D_FILE_STORAGE_DIR apart",
                uploads.display(),
                library.display()
            )));
        }
        Ok(files)
    }

    /// Uploads under `prefix`, drawings under `library_prefix`, one bucket.
    pub fn s3(s3: &S3Config) -> Result<Files, StoreError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region)
            .with_retry(s3_retries())
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(std::time::Duration::from_secs(30))
                    .with_connect_timeout(std::time::Duration::from_secs(5)),
            );
        if let Some(endpoint) = &s3.endpoint {
            // S3-compatible servers are addressed by path, not by bucket host name.
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(key), Some(secret)) = (&s3.access_key, &s3.secret_key) {
            builder = builder.with_access_key_id(key).with_secret_access_key(secret);
        }
        if let Some(token) = &s3.session_token {
            builder = builder.with_token(token);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(StoreError::from)?);
        let area = |prefix: &str| Area {
            store: store.clone(),
            place: Place::S3 {
                bucket: s3.bucket.clone(),
                prefix: prefix.to_string(),
            },
        };
        Ok(Files {
            uploads: area(&s3.prefix),
            library: area(&s3.library_prefix),
        })
    }

    /// `<job_id>/<uuid hex>_<safe name>` under the uploads root.
    pub async fn put_upload(&self, job_id: &str, file_name: &str, bytes: Bytes) -> Result<FileRef, StoreError> {
        self.uploads.put(&unique_key(job_id, file_name), bytes).await
    }

    /// `<tenant_id>/<uuid hex>_<safe name>` under the library root.
    pub async fn put_drawing(&self, tenant_id: &str, file_name: &str, bytes: Bytes) -> Result<FileRef, StoreError> {
        self.library.put(&unique_key(tenant_id, file_name), bytes).await
    }

    pub async fn get(&self, file: &FileRef) -> Result<Bytes, StoreError> {
        let (area, key) = self.locate(file)?;
        let started = Instant::now();
        let result = async { Ok(area.store.get(&key).await?.bytes().await?) }.await;
        area.record(t::FILE_DOWNLOADS_TOTAL, "download", started, &result);
        result
    }

    /// Deleting what is already gone succeeds: callers retry after crashes.
    pub async fn delete(&self, file: &FileRef) -> Result<(), StoreError> {
        let (area, key) = self.locate(file)?;
        area.delete(&key).await
    }

    /// Readiness: both areas accept a write (the directory or the bucket
    /// exists, the credentials are good).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.uploads.check().await?;
        self.library.check().await
    }

    /// The uploads area alone accepts a write: all gc needs, and all a gc
    /// role limited to the uploads prefix may do.
    pub async fn check_uploads(&self) -> Result<(), StoreError> {
        self.uploads.check().await
    }

    /// Where uploads go, as `local:<root>` or `s3:<bucket>/<prefix>`: gc
    /// compares the service's with its own before it deletes anything.
    pub fn uploads_location(&self) -> String {
        match &self.uploads.place {
            Place::Local { root } => format!("local:{}", root.display()),
            Place::S3 { bucket, prefix } => format!("s3:{bucket}/{prefix}"),
        }
    }

    /// The key of a reference into the uploads area, comparable with
    /// [`Listed::key`]; `None` for a reference anywhere else.
    pub fn upload_key(&self, file: &FileRef) -> Option<String> {
        self.uploads.key_of(file).map(|key| key.to_string())
    }

    /// Every object under the uploads root or prefix, and nothing else.
    pub fn list_uploads(&self) -> BoxStream<'static, Result<Listed, StoreError>> {
        let prefix = match &self.uploads.place {
            Place::Local { .. } => None,
            Place::S3 { prefix, .. } => Some(Path::from(prefix.as_str())),
        };
        let skip = prefix.as_ref().map_or(0, |p| p.parts().count());
        self.uploads
            .store
            .list(prefix.as_ref())
            .map(move |meta| {
                let meta = meta.map_err(StoreError::from)?;
                let parts: Vec<_> = meta.location.parts().skip(skip).collect();
                let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
                let millis = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
                Ok(Listed {
                    found: classify(&parts),
                    key: meta.location.to_string(),
                    size: meta.size,
                    modified: UNIX_EPOCH + Duration::from_millis(millis),
                })
            })
            .boxed()
    }

    /// Deletes a listed upload; gone already is fine.
    pub async fn delete_upload(&self, key: &str) -> Result<(), StoreError> {
        let area = &self.uploads;
        let inside = match &area.place {
            // The local listing follows symlinks: a job directory that is
            // one would lead a delete out of the root.
            Place::Local { root } => key
                .split('/')
                .next()
                .is_some_and(|dir| std::fs::symlink_metadata(root.join(dir)).is_ok_and(|m| m.file_type().is_dir())),
            Place::S3 { prefix, .. } => key.strip_prefix(prefix.as_str()).is_some_and(|k| k.starts_with('/')),
        };
        if !inside {
            return Err(StoreError::InvalidRef(format!("{key} is outside the uploads")));
        }
        area.delete(&Path::from(key)).await
    }

    /// Local uploads only (S3 has neither): removes what a crash left in
    /// the uploads directory and object_store cannot list, if older than
    /// `cutoff`: half-written temporary files (`<name>#<digits>`) and empty
    /// job directories. Symlinks are never followed.
    pub async fn tidy_uploads(&self, cutoff: SystemTime, execute: bool) -> Result<Tidied, StoreError> {
        let Place::Local { root } = &self.uploads.place else {
            return Ok(Tidied::default());
        };
        let root = root.clone();
        tokio::task::spawn_blocking(move || tidy(&root, cutoff, execute))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .map_err(|e| StoreError::Unavailable(format!("tidying the uploads directory: {e}")))
    }

    /// `local` or `s3`, for logs and metric labels.
    pub fn backend(&self) -> &'static str {
        self.uploads.backend()
    }

    fn locate(&self, file: &FileRef) -> Result<(&Area, Path), StoreError> {
        [&self.uploads, &self.library]
            .into_iter()
            .find_map(|area| area.key_of(file).map(|key| (area, key)))
            .ok_or_else(|| StoreError::InvalidRef(format!("{file:?} is outside this server's storage")))
    }
}

impl Area {
    fn local(root: &FsPath) -> Result<Area, StoreError> {
        let unavailable = |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", root.display()));
        std::fs::create_dir_all(root).map_err(unavailable)?;
        // Refs carry absolute paths, so `./data` today and `/srv/data`
        // tomorrow still find the same files.
        let root = std::fs::canonicalize(root).map_err(unavailable)?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true);
        Ok(Area {
            store: Arc::new(store),
            place: Place::Local { root },
        })
    }

    /// Deleting what is already gone succeeds: callers retry after crashes,
    /// and gc races jobs that clean up after themselves.
    async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::from(e)),
        };
        self.record(t::FILE_DELETES_TOTAL, "delete", started, &result);
        result
    }

    async fn check(&self) -> Result<(), StoreError> {
        let probe = self.object(&format!(".ready-{}", uuid::Uuid::new_v4().simple()));
        self.store
            .put(&probe, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| self.describe(e))?;
        Ok(self.store.delete(&probe).await?)
    }

    fn backend(&self) -> &'static str {
        match self.place {
            Place::Local { .. } => "local",
            Place::S3 { .. } => "s3",
        }
    }

    /// The store's path of `key` (relative to the area).
    fn object(&self, key: &str) -> Path {
        match &self.place {
            Place::Local { .. } => Path::from(key),
            Place::S3 { prefix, .. } => Path::from(format!("{prefix}/{key}")),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<FileRef, StoreError> {
        let started = Instant::now();
        let size = bytes.len();
        let object = self.object(key);
        let result = self
            .store
            .put(&object, PutPayload::from_bytes(bytes))
            .await
            .map(|_| match &self.place {
                Place::Local { root } => FileRef::Local {
                    path: root.join(key).to_string_lossy().into_owned(),
                },
                Place::S3 { bucket, .. } => FileRef::S3 {
                    bucket: bucket.clone(),
                    key: object.to_string(),
                },
            })
            .map_err(|e| self.describe(e));
        self.record(t::FILE_UPLOADS_TOTAL, "upload", started, &result);
        if result.is_ok() {
            metrics::histogram!(t::FILE_UPLOAD_BYTES, "backend" => self.backend()).record(size as f64);
        }
        result
    }

    /// A write's error, where "not found" can only mean the bucket or the
    /// directory: storage is unusable, not the file missing.
    fn describe(&self, e: object_store::Error) -> StoreError {
        match (e, &self.place) {
            (object_store::Error::NotFound { .. }, Place::S3 { bucket, .. }) => {
                StoreError::Unavailable(format!("bucket `{bucket}` does not exist"))
            }
            (e, _) => StoreError::from(e),
        }
    }

    /// The object key of a reference into this area; `None` for anything
    /// else, so a reference can never reach outside the storage areas.
    fn key_of(&self, file: &FileRef) -> Option<Path> {
        let parts: Vec<&str> = match (&self.place, file) {
            (Place::Local { root }, FileRef::Local { path }) => FsPath::new(path)
                .strip_prefix(root)
                .ok()?
                .iter()
                .map(|p| p.to_str())
                .collect::<Option<_>>()?,
            (Place::S3 { bucket, prefix }, FileRef::S3 { bucket: b, key }) if b == bucket => key
                .strip_prefix(prefix.as_str())?
                .strip_prefix('/')?
                .split('/')
                .collect(),
            _ => return None,
        };
        let safe = !parts.is_empty() && parts.iter().all(|p| !p.is_empty() && *p != ".." && *p != ".");
        safe.then(|| match (&self.place, file) {
            (Place::S3 { .. }, FileRef::S3 { key, .. }) => Path::from(key.as_str()),
            _ => Path::from_iter(parts),
        })
    }

    fn record<T>(
        &self,
        counter: &'static str,
        operation: &'static str,
        started: Instant,
        result: &Result<T, StoreError>,
    ) {
        let status = if result.is_ok() { "success" } else { "error" };
        let backend = self.backend();
        metrics::counter!(counter, "backend" => backend, "status" => status).increment(1);
        metrics::histogram!(t::FILE_OPERATION_DURATION_SECONDS, "backend" => backend, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
    }
}

/// The kind of an object from its path under the uploads root.
fn classify(parts: &[&str]) -> Found {
    let upload_name = |name: &str| {
        name.len() > 33 && name.is_char_boundary(32) && is_uuid_hex(&name[..32]) && name.as_bytes()[32] == b'_'
    };
    match parts {
        [dir, name] if !dir.is_empty() && upload_name(name) => Found::Upload,
        [name] if name.strip_prefix(".ready-").is_some_and(is_uuid_hex) => Found::Probe,
        _ => Found::Foreign,
    }
}

/// A uuid's 32 lowercase hex digits, as `unique_key` and probes write it.
fn is_uuid_hex(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// object_store writes `<name>#<digits>` and renames it into place.
fn is_temp_file(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.rsplit_once('#'))
        .is_some_and(|(_, digits)| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Jobs finish while the walk runs: what vanished under it is skipped.
fn tidy(root: &FsPath, cutoff: SystemTime, execute: bool) -> std::io::Result<Tidied> {
    let mut tidied = Tidied::default();
    tidy_temp_files(root, cutoff, execute, &mut tidied)?;
    for entry in std::fs::read_dir(root)? {
        let Some((entry, meta)) = present(entry)? else { continue };
        if !meta.is_dir() {
            continue;
        }
        let dir = entry.path();
        // Taken before removing temp files, which makes the directory new.
        let dir_was_old = meta.modified().is_ok_and(|m| m < cutoff);
        let left = match tidy_temp_files(&dir, cutoff, execute, &mut tidied) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            left => left?,
        };
        // remove_dir refuses a directory that gained a file meanwhile.
        if dir_was_old && left == 0 && (!execute || std::fs::remove_dir(&dir).is_ok()) {
            tidied.empty_dirs += 1;
        }
    }
    Ok(tidied)
}

/// Removes the old temp files directly in `dir`; returns how many entries
/// stay.
fn tidy_temp_files(dir: &FsPath, cutoff: SystemTime, execute: bool, tidied: &mut Tidied) -> std::io::Result<u64> {
    let mut left = 0;
    for entry in std::fs::read_dir(dir)? {
        let Some((entry, meta)) = present(entry)? else { continue };
        let stray = meta.is_file() && is_temp_file(&entry.file_name()) && meta.modified().is_ok_and(|m| m < cutoff);
        if stray && (!execute || std::fs::remove_file(entry.path()).is_ok()) {
            tidied.temp_files += 1;
            tidied.temp_bytes += meta.len();
        } else {
            left += 1;
        }
    }
    Ok(left)
}

/// An entry and its own metadata (a symlink's, not its target's); `None`
/// when it was removed after the directory was read.
fn present(
    entry: std::io::Result<std::fs::DirEntry>,
) -> std::io::Result<Option<(std::fs::DirEntry, std::fs::Metadata)>> {
    let found = entry.and_then(|entry| entry.metadata().map(|meta| (entry, meta)));
    match found {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        other => other.map(Some),
    }
}

/// `<dir>/<uuid hex>_<safe name>`: the uuid keeps two uploads of one name apart.
fn unique_key(dir: &str, file_name: &str) -> String {
    format!(
        "{}/{}_{}",
        safe_name(dir),
        uuid::Uuid::new_v4().simple(),
        safe_name(file_name)
    )
}

/// CONTRACT §4: basename, runs of `[^A-Za-z0-9._-]` → `_`, trimmed of `._-`,
/// `upload.bin` if empty, at most 200 characters.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out = String::with_capacity(base.len());
    for c in base.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed: String = out.trim_matches(['.', '_', '-']).chars().take(200).collect();
    if trimmed.is_empty() {
        "upload.bin".to_string()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_follow_the_contract() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("C:\\drawings\\part 1 (rev A).dxf"), "part_1_rev_A_.dxf");
        assert_eq!(safe_name("..."), "upload.bin");
        assert_eq!(safe_name(""), "upload.bin");
        assert_eq!(safe_name("零件.png"), "png");
        assert_eq!(safe_name(&"a".repeat(300)).len(), 200);
    }

    #[tokio::test]
    async fn files_round_trip_and_refs_cannot_escape_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::local(&dir.path().join("up"), &dir.path().join("lib")).unwrap();
        let up = files
            .put_upload("job1", "a b.png", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let FileRef::Local { path } = &up else { panic!("local") };
        assert!(path.contains("/up/job1/") && path.ends_with("_a_b.png"), "{path}");
        assert_eq!(files.get(&up).await.unwrap(), Bytes::from_static(b"one"));
        let drawing = files
            .put_drawing("t1", "d.dxf", Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(files.get(&drawing).await.unwrap(), Bytes::from_static(b"two"));
        files.delete(&up).await.unwrap();
        files.delete(&up).await.unwrap();
        assert!(matches!(files.get(&up).await, Err(StoreError::NotFound(_))));
        for outside in [
            "/etc/passwd".to_string(),
            format!("{}/up/../../x", dir.path().display()),
        ] {
            let escape = FileRef::Local { path: outside };
            assert!(matches!(files.get(&escape).await, Err(StoreError::InvalidRef(_))));
        }
        files.check().await.unwrap();
    }

    #[test]
    fn only_upload_shaped_keys_count_as_uploads() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(classify(&["job1", &format!("{hex}_a.png")]), Found::Upload);
        assert_eq!(classify(&[&format!(".ready-{hex}")]), Found::Probe);
        assert_eq!(classify(&[".ready-x"]), Found::Foreign);
        for foreign in [
            vec!["job1", "a.png"],
            vec!["notes.txt"],
            vec!["a", "b", &format!("{hex}_a.png")],
            vec!["job1", &format!("{}_a.png", hex.to_uppercase())],
            vec!["job1", &format!("{hex}_")],
            vec!["job1", "零件零件零件零件零件零件零件零件零件零件零件_a.png"],
        ] {
            assert_eq!(classify(&foreign), Found::Foreign, "{foreign:?}");
        }
        assert!(is_temp_file("a.png#12".as_ref()) && !is_temp_file("a#b".as_ref()) && !is_temp_file("a#".as_ref()));
    }

    #[tokio::test]
    async fn tidying_removes_old_temp_files_and_empty_job_dirs_only() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::local(&dir.path().join("up"), &dir.path().join("lib")).unwrap();
        let up = dir.path().join("up");
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        let aged = |path: &FsPath| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        };
        for dir in ["empty-old", "empty-new", "with-temp"] {
            std::fs::create_dir(up.join(dir)).unwrap();
        }
        std::fs::write(up.join("with-temp/x.png#3"), b"half").unwrap();
        aged(&up.join("with-temp/x.png#3"));
        std::fs::write(up.join("young.png#4"), b"new").unwrap();
        std::fs::write(up.join("keep#me"), b"mine").unwrap();
        aged(&up.join("keep#me"));
        let age_dir = |name: &str| {
            std::fs::File::open(up.join(name))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        };
        age_dir("empty-old");
        age_dir("with-temp");
        let cutoff = SystemTime::now() - Duration::from_secs(3600);

        let dry = files.tidy_uploads(cutoff, false).await.unwrap();
        let expected = Tidied {
            temp_files: 1,
            temp_bytes: 4,
            empty_dirs: 2,
        };
        assert_eq!(dry, expected);
        assert!(up.join("empty-old").exists() && up.join("with-temp/x.png#3").exists());
        assert_eq!(files.tidy_uploads(cutoff, true).await.unwrap(), expected);
        assert!(!up.join("empty-old").exists() && !up.join("with-temp").exists());
        for kept in ["empty-new", "young.png#4", "keep#me"] {
            assert!(up.join(kept).exists(), "{kept}");
        }
    }
}
