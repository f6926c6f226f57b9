//! Multipart uploads with limits: the body is refused with 413 as soon as it
//! is known to be too large (Content-Length, or while streaming), and a body
//! that stalls past the body timeout gets 408. Nothing is stored here; the
//! caller stores only a complete, accepted upload.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::BodyStream;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use multer::{Constraints, Multipart, SizeLimit};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::error::ApiError;

/// `geom_json` is geometry metadata, not a drawing: a megabyte is plenty.
const MAX_GEOM_JSON_BYTES: u64 = 1 << 20;
/// Boundaries and part headers on top of the parts themselves.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 << 10;

pub struct Upload {
    pub file_name: String,
    pub content_type: String,
    pub bytes: Bytes,
    /// Parsed and checked as geometry L4 can draw.
    pub geom_json: Option<serde_json::Value>,
    /// Held as long as the bytes are, so the upload budget bounds memory
    /// until the handler is done with them, not just while they arrive.
    _permit: OwnedSemaphorePermit,
}

pub struct UploadLimits {
    pub max_file_bytes: u64,
    pub body_deadline: Instant,
}

pub async fn read(
    request: Request<Incoming>,
    limits: UploadLimits,
    permit: OwnedSemaphorePermit,
) -> Result<Upload, ApiError> {
    let max_body = limits.max_file_bytes + MAX_GEOM_JSON_BYTES + MULTIPART_OVERHEAD_BYTES;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        return Err(too_large(limits.max_file_bytes));
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_MULTIPART",
            "expected a multipart/form-data body with a `file` part",
        )
    })?;
    let stream = BodyStream::new(request.into_body())
        .filter_map(|frame| async move { frame.map(|f| f.into_data().ok()).transpose() });
    let constraints = Constraints::new().allowed_fields(vec!["file", "geom_json"]).size_limit(
        SizeLimit::new()
            .whole_stream(max_body)
            .for_field("file", limits.max_file_bytes)
            .for_field("geom_json", MAX_GEOM_JSON_BYTES),
    );
    let mut multipart = Multipart::with_constraints(stream, boundary, constraints);
    let mut file: Option<(String, String, Bytes)> = None;
    let mut geom_json = None;
    let deadline = limits.body_deadline;
    while let Some(mut field) = within(deadline, multipart.next_field())
        .await?
        .map_err(|e| multipart_error(e, &limits))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().unwrap_or("upload.bin").to_string();
        let part_type = field
            .content_type()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut bytes = BytesMut::new();
        while let Some(chunk) = within(deadline, field.chunk())
            .await?
            .map_err(|e| multipart_error(e, &limits))?
        {
            bytes.extend_from_slice(&chunk);
        }
        if name == "file" {
            file = Some((file_name, part_type, bytes.freeze()));
        } else {
            let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_GEOM_JSON",
                    format!("`geom_json` is not valid JSON: {e}"),
                )
            })?;
            geom_json = Some(json);
        }
    }
    let (file_name, content_type, bytes) = file.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MISSING_FILE",
            "the multipart body has no `file` part",
        )
    })?;
    // After the file check: a body without a drawing is the first thing to say.
    if let Some(json) = &geom_json {
        crate::engine::fine::check_geom_json(json, crate::engine::Limits::default())?;
    }
    Ok(Upload {
        file_name,
        content_type,
        bytes,
        geom_json,
        _permit: permit,
    })
}

async fn within<T>(deadline: Instant, step: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
    tokio::time::timeout_at(deadline, step).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body did not arrive in time",
        )
    })
}

fn too_large(max_file_bytes: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "FILE_TOO_LARGE",
        format!("the upload is larger than the limit of {max_file_bytes} bytes"),
    )
    .with("max_upload_bytes", max_file_bytes)
}

fn multipart_error(error: multer::Error, limits: &UploadLimits) -> ApiError {
    match error {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            too_large(limits.max_file_bytes)
        }
        multer::Error::UnknownField { field_name } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_MULTIPART",
            format!(
                "unexpected part `{}`; send `file` and optionally `geom_json`",
                field_name.unwrap_or_default()
            ),
        ),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_MULTIPART",
            format!("cannot read the multipart body: {other}"),
        ),
    }
}
