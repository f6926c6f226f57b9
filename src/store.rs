//! File storage behind `object_store`: uploads that jobs read, and the drawings
//! of each tenant's library. The only module that builds object paths
//! (CONTRACT §4 key layout and safe names); it knows nothing of jobs or HTTP.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

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

/// One object store rooted at a directory, with the paths it may hold.
struct Area {
    store: Arc<dyn ObjectStore>,
    root: PathBuf,
}

/// Uploads (read by jobs, removed when they finish) and library drawings
/// (kept until deleted) live in separate roots, so a sweep of uploads can
/// never reach a library drawing.
pub struct Files {
    uploads: Area,
    library: Area,
}

const BACKEND: &str = "local";

impl Files {
    pub fn local(uploads_root: &FsPath, library_root: &FsPath) -> Result<Files, StoreError> {
        Ok(Files {
            uploads: Area::local(uploads_root)?,
            library: Area::local(library_root)?,
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
        record(t::FILE_DOWNLOADS_TOTAL, "download", started, &result);
        result
    }

    /// Deleting what is already gone succeeds: callers retry after crashes.
    pub async fn delete(&self, file: &FileRef) -> Result<(), StoreError> {
        let (area, key) = self.locate(file)?;
        let started = Instant::now();
        let result = match area.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::from(e)),
        };
        record(t::FILE_DELETES_TOTAL, "delete", started, &result);
        result
    }

    /// Readiness: both roots exist and accept a write.
    pub async fn check(&self) -> Result<(), StoreError> {
        for area in [&self.uploads, &self.library] {
            let probe = Path::from(format!(".ready-{}", uuid::Uuid::new_v4().simple()));
            area.store.put(&probe, PutPayload::from_static(b"ok")).await?;
            area.store.delete(&probe).await?;
        }
        Ok(())
    }

    fn locate(&self, file: &FileRef) -> Result<(&Area, Path), StoreError> {
        let FileRef::Local { path } = file else {
            return Err(StoreError::InvalidRef(format!("{file:?} is not on local storage")));
        };
        [&self.uploads, &self.library]
            .into_iter()
            .find_map(|area| area.key_of(FsPath::new(path)).map(|key| (area, key)))
            .ok_or_else(|| StoreError::InvalidRef(format!("{path} is outside the storage roots")))
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
            root,
        })
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<FileRef, StoreError> {
        let started = Instant::now();
        let size = bytes.len();
        let result = self
            .store
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await
            .map(|_| FileRef::Local {
                path: self.root.join(key).to_string_lossy().into_owned(),
            })
            .map_err(StoreError::from);
        record(t::FILE_UPLOADS_TOTAL, "upload", started, &result);
        if result.is_ok() {
            metrics::histogram!(t::FILE_UPLOAD_BYTES, "backend" => BACKEND).record(size as f64);
        }
        result
    }

    /// The object key of a path under this root; `None` for anything else,
    /// so a reference can never reach outside the storage roots.
    fn key_of(&self, path: &FsPath) -> Option<Path> {
        let relative = path.strip_prefix(&self.root).ok()?;
        let parts: Vec<&str> = relative.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
        let safe = !parts.is_empty() && parts.iter().all(|p| !p.is_empty() && *p != ".." && *p != ".");
        safe.then(|| Path::from_iter(parts))
    }
}

fn record<T>(counter: &'static str, operation: &'static str, started: Instant, result: &Result<T, StoreError>) {
    let status = if result.is_ok() { "success" } else { "error" };
    metrics::counter!(counter, "backend" => BACKEND, "status" => status).increment(1);
    metrics::histogram!(t::FILE_OPERATION_DURATION_SECONDS, "backend" => BACKEND, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
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
}
