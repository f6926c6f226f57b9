//! API errors: an HTTP status, a stable machine-readable code and a message,
//! rendered as `{"detail": {...}}` (CONTRACT §1).

use hyper::StatusCode;
use serde_json::{Map, Value, json};

use crate::engine::EngineError;
use crate::jobs::JobError;
use crate::library::LibraryError;
use crate::store::StoreError;
use crate::vision::VisionError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable code clients branch on; `None` for the contract's plain-string
    /// auth errors.
    pub code: Option<&'static str>,
    pub message: String,
    pub fields: Map<String, Value>,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: Some(code),
            message: message.into(),
            fields: Map::new(),
            retry_after: None,
        }
    }

    /// `{"detail": "<message>"}`, as the original's 401s.
    pub fn plain(status: StatusCode, message: &str) -> ApiError {
        ApiError {
            code: None,
            ..ApiError::new(status, "", message)
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_parameter(name: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            format!("query parameter `{name}`: {reason}"),
        )
        .with("parameter", name)
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(message = "request failed", %error);
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error; see the server log",
        )
    }

    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::warn!(message = "backend unavailable", what, %error);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "BACKEND_UNAVAILABLE",
            format!("{what} is unavailable; try again"),
        )
        .with("backend", what)
        .retry_after(5)
    }

    pub fn body(&self) -> Value {
        match self.code {
            None => json!({ "detail": self.message }),
            Some(code) => {
                let mut detail = Map::new();
                detail.insert("error".into(), code.into());
                detail.insert("message".into(), self.message.clone().into());
                detail.extend(self.fields.clone());
                json!({ "detail": detail })
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Empty => ApiError::new(StatusCode::BAD_REQUEST, "EMPTY_FILE", "the uploaded file is empty"),
            EngineError::Unsupported(m) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_FORMAT", m),
            EngineError::Unreadable(m) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNREADABLE_DRAWING", m),
            EngineError::InvalidGeometry(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "INVALID_GEOM_JSON", format!("geom_json: {m}"))
            }
        }
    }
}

impl From<VisionError> for ApiError {
    fn from(e: VisionError) -> Self {
        match e {
            VisionError::Open { retry_after } => ApiError::unavailable("vision", &e)
                .retry_after(u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX)),
            VisionError::Unavailable(_) => ApiError::unavailable("vision", e),
            VisionError::Refused(_) => ApiError::new(StatusCode::BAD_GATEWAY, "VISION_REFUSED", e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::unavailable("storage", e),
            other => ApiError::internal(other),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::QueueFull { max, current } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "JOB_QUEUE_FULL",
                format!("the job queue is full ({current} of {max}); retry later"),
            )
            .with("max_jobs", max)
            .with("current_jobs", current)
            .retry_after(5),
            JobError::Unavailable(_) => ApiError::unavailable("job store", e),
        }
    }
}

impl From<LibraryError> for ApiError {
    fn from(e: LibraryError) -> Self {
        match e {
            LibraryError::Exists(id) => ApiError::new(
                StatusCode::CONFLICT,
                "DRAWING_EXISTS",
                format!("drawing `{id}` already exists; delete it first or choose another drawing_id"),
            )
            .with("drawing_id", id),
            LibraryError::Unavailable(_) => ApiError::unavailable("library", e),
            LibraryError::Store(e) => e.into(),
        }
    }
}
