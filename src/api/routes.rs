//! Routing and handlers: every endpoint of CONTRACT §1 plus the library,
//! health, readiness, metrics and stats endpoints.

use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::auth::Tenants;
use super::error::ApiError;
use super::params::Query;
use super::upload::{self, Upload, UploadLimits};
use crate::app::{App, now};
use crate::engine::{Mode, SearchParams};
use crate::jobs::{CancelOutcome, Job, JobError, NewJob, Payload, Status};
use crate::search;
use crate::stats::TenantStats;
use crate::telemetry as t;

const PREFIX: &str = "/api/v1/dedup/2d";
const SERVICE: &str = "dedup2d";

pub type Reply = Result<Response<Full<Bytes>>, ApiError>;

pub struct Api {
    pub app: std::sync::Arc<App>,
    pub tenants: Tenants,
    /// A worker's metrics address serves no tenant routes.
    pub operations_only: bool,
}

impl Api {
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        // Probes and scrapes are not traffic: counted, a /ready that says
        // 503 during a Redis blip would read as an error rate.
        let operational = matches!(request.uri().path(), "/health" | "/ready" | "/metrics");
        let reply = self.route(request).await;
        let response = reply.unwrap_or_else(|e| error_response(&e));
        if !operational {
            let class = format!("{}xx", response.status().as_u16() / 100);
            metrics::counter!(t::HTTP_REQUESTS_TOTAL, "status" => class).increment(1);
            t::observe_answer(response.status().is_server_error());
            metrics::histogram!(t::HTTP_REQUEST_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        }
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path().trim_end_matches('/').to_string();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/health") => health(),
            (&Method::GET, "/ready") => self.ready().await,
            (&Method::GET, "/metrics") => self.metrics().await,
            _ if self.operations_only => Err(not_found(&path)),
            (&Method::GET, "/api/v1/stats") => {
                let tenant = self.tenants.authenticate(request.headers())?;
                self.stats(&tenant).await
            }
            _ if path.starts_with(PREFIX) => {
                let tenant = self.tenants.authenticate(request.headers())?;
                let route = path[PREFIX.len()..].to_string();
                self.tenant_route(&method, &route, &tenant, request).await
            }
            _ => Err(not_found(&path)),
        }
    }

    async fn tenant_route(&self, method: &Method, route: &str, tenant: &str, request: Request<Incoming>) -> Reply {
        let segments: Vec<&str> = route.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["health"]) => self.tenant_health(tenant).await,
            (&Method::POST, ["search"]) => self.count_rejection(tenant, self.search(tenant, request).await).await,
            (&Method::GET, ["jobs"]) => self.list_jobs(tenant, &request).await,
            (&Method::GET, ["jobs", id]) => self.get_job(tenant, id).await,
            (&Method::POST, ["jobs", id, "cancel"]) => self.cancel_job(tenant, id).await,
            (&Method::GET, ["index"]) => self.list_drawings(tenant, &request).await,
            (&Method::POST, ["index", "add"]) => {
                self.count_rejection(tenant, self.add_drawing(tenant, request).await)
                    .await
            }
            (&Method::POST, ["index", "rebuild"]) => self.rebuild(tenant).await,
            (&Method::DELETE, ["index", id]) => self.delete_drawing(tenant, id).await,
            (_, ["search"] | ["jobs"] | ["jobs", _] | ["jobs", _, "cancel"] | ["index", ..] | ["health"]) => {
                Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    format!("{method} is not allowed here"),
                ))
            }
            _ => Err(not_found(request.uri().path())),
        }
    }

    async fn read_upload(&self, request: Request<Incoming>) -> Result<Upload, ApiError> {
        let config = &self.app.config;
        let body_deadline = tokio::time::Instant::now() + config.http_body_timeout;
        let permit = tokio::time::timeout_at(body_deadline, self.app.upload_permits.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::unavailable("upload capacity", "too many uploads in progress"))?
            .map_err(ApiError::internal)?;
        let limits = UploadLimits {
            max_file_bytes: config.max_upload_bytes,
            body_deadline,
        };
        upload::read(request, limits, permit).await
    }

    async fn search(&self, tenant: &str, request: Request<Incoming>) -> Reply {
        let query = Query::parse(request.uri().query());
        let params = query.search_params()?;
        let callback_url = self.callback_url(&query).await?;
        // A callback is sent when a job ends, so asking for one asks for a job.
        let wants_async = query.flag("async", false)? || callback_url.is_some();
        let upload = self.read_upload(request).await?;
        let forced = self.forced_async_reason(&upload, &params);
        if !wants_async && forced.is_none() {
            if let Some(vision) = &self.app.vision {
                let result =
                    search::by_vision(vision, &upload.file_name, &upload.content_type, upload.bytes, &params).await?;
                return Ok(json_response(StatusCode::OK, &result));
            }
            let (query, fingerprint_ms) = search::query(&self.app, upload.bytes.clone()).await?;
            let source = search::Source {
                bytes: &upload.bytes,
                geom_json: upload.geom_json.as_ref(),
            };
            let result = search::run(&self.app, tenant, &query, source, &params, fingerprint_ms).await?;
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::to_value(result).map_err(ApiError::internal)?,
            ));
        }
        search::inspect(&self.app, upload.bytes.clone()).await?;
        let job_id = self.enqueue(tenant, upload, params, callback_url).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "job_id": job_id,
                "status": "pending",
                "poll_url": format!("{PREFIX}/jobs/{job_id}"),
                "forced_async_reason": forced,
            }),
        ))
    }

    /// Stores the upload, then admits its job; the upload goes again if the
    /// job is refused, so a full queue keeps nothing.
    async fn enqueue(
        &self,
        tenant: &str,
        upload: Upload,
        params: SearchParams,
        callback_url: Option<String>,
    ) -> Result<String, ApiError> {
        let job_id = uuid::Uuid::new_v4().to_string();
        let files = &self.app.files;
        // Seed 003: while old workers still run, the bytes also travel inline.
        let inline = self.app.config.job_payload_include_bytes_b64
            && upload.bytes.len() as u64 <= self.app.config.job_payload_bytes_b64_max_bytes;
        let file_bytes_b64 = inline.then(|| base64::engine::general_purpose::STANDARD.encode(&upload.bytes));
        let file_ref = files.put_upload(&job_id, &upload.file_name, upload.bytes).await?;
        let job = NewJob {
            job_id: job_id.clone(),
            created_at: now(),
            payload: Payload {
                tenant_id: tenant.to_string(),
                file_name: upload.file_name,
                content_type: upload.content_type,
                file_ref: Some(file_ref.clone()),
                file_bytes_b64,
                request_params: params,
                callback_url,
                geom_json: upload.geom_json,
            },
        };
        if let Err(e) = self.app.jobs.admit(job, self.app.config.async_max_jobs).await {
            let _ = files.delete(&file_ref).await;
            if matches!(e, JobError::QueueFull { .. }) {
                metrics::counter!(t::QUEUE_FULL_TOTAL).increment(1);
            }
            return Err(e.into());
        }
        metrics::counter!(t::JOBS_SUBMITTED_TOTAL).increment(1);
        self.app.job_admitted.notify_one();
        Ok(job_id)
    }

    /// CONTRACT §5's URL rules, checked before the upload is read.
    async fn callback_url(&self, query: &Query) -> Result<Option<String>, ApiError> {
        let Some(url) = query.text("callback_url").filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        self.app
            .callbacks
            .settings()
            .check_at_submit(url)
            .await
            .map_err(|refusal| {
                ApiError::new(StatusCode::BAD_REQUEST, "CALLBACK_URL_INVALID", refusal.to_string())
                    .with("reason", refusal.as_str())
            })?;
        Ok(Some(url.to_string()))
    }

    fn forced_async_reason(&self, upload: &Upload, params: &SearchParams) -> Option<String> {
        let config = &self.app.config;
        let size_limit = config.forced_async_file_size_bytes;
        if size_limit > 0 && upload.bytes.len() as u64 > size_limit {
            return Some(format!("file_size>{}", human_size(size_limit)));
        }
        if config.forced_async_on_precision && params.enable_precision && upload.geom_json.is_some() {
            return Some("enable_precision_with_geom_json".into());
        }
        if config.forced_async_on_mode_precise && params.mode == Mode::Precise {
            return Some("mode=precise".into());
        }
        None
    }

    /// Bad input and a full queue count as `rejected` in the tenant's stats.
    async fn count_rejection(&self, tenant: &str, reply: Reply) -> Reply {
        if let Err(e) = &reply
            && e.status.is_client_error()
            && let Err(error) = self.app.stats.increment(tenant, TenantStats::REJECTED).await
        {
            tracing::warn!(message = "stats not counted", %error);
        }
        reply
    }

    async fn owned_job(&self, tenant: &str, job_id: &str, operation: &'static str) -> Result<Job, ApiError> {
        let job = self.app.jobs.get(job_id).await?.ok_or_else(|| job_not_found(job_id))?;
        if job.tenant_id != tenant {
            return Err(forbidden(job_id, operation));
        }
        Ok(job)
    }

    async fn get_job(&self, tenant: &str, job_id: &str) -> Reply {
        let job = self.owned_job(tenant, job_id, "get").await?;
        Ok(json_response(
            StatusCode::OK,
            &serde_json::to_value(job).map_err(ApiError::internal)?,
        ))
    }

    async fn list_jobs(&self, tenant: &str, request: &Request<Incoming>) -> Reply {
        let query = Query::parse(request.uri().query());
        let status = match query.text("status") {
            None => None,
            Some(raw) => Some(Status::parse(raw).ok_or_else(|| {
                let names: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_STATUS_FILTER",
                    format!("status {raw:?} is not one of {}", names.join(", ")),
                )
            })?),
        };
        let limit = query.number("limit", 50u32, 1, 200)?;
        let (jobs, total) = self.app.jobs.list(tenant, status, limit).await?;
        let jobs: Vec<Value> = jobs
            .into_iter()
            .map(|j| {
                json!({
                    "job_id": j.job_id, "tenant_id": j.tenant_id, "status": j.status,
                    "created_at": j.created_at, "started_at": j.started_at,
                    "finished_at": j.finished_at, "error": j.error,
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({ "jobs": jobs, "total": total })))
    }

    /// Never waits for the job: the store marks it canceled and a running
    /// job is only signalled.
    async fn cancel_job(&self, tenant: &str, job_id: &str) -> Reply {
        let canceled = match self.app.jobs.cancel(job_id, tenant, now()).await? {
            CancelOutcome::NotFound => return Err(job_not_found(job_id)),
            CancelOutcome::Forbidden => return Err(forbidden(job_id, "cancel")),
            CancelOutcome::AlreadyFinished(status) => {
                metrics::counter!(t::CANCEL_TOTAL, "result" => "already_finished").increment(1);
                tracing::info!(message = "cancel of a finished job", job_id, status = status.as_str());
                false
            }
            CancelOutcome::Canceled { was, file_ref } => {
                metrics::counter!(t::CANCEL_TOTAL, "result" => "canceled").increment(1);
                metrics::counter!(t::JOBS_TOTAL, "status" => Status::Canceled.as_str()).increment(1);
                if was == Status::InProgress {
                    self.app.signal_cancel(job_id);
                }
                if let Some(file_ref) = file_ref.filter(|_| self.app.config.file_storage_cleanup_on_finish) {
                    let _ = self.app.files.delete(&file_ref).await;
                }
                true
            }
        };
        Ok(json_response(
            StatusCode::OK,
            &json!({ "job_id": job_id, "tenant_id": tenant, "canceled": canceled }),
        ))
    }

    async fn add_drawing(&self, tenant: &str, request: Request<Incoming>) -> Reply {
        let started = Instant::now();
        let query = Query::parse(request.uri().query());
        let drawing_id = query.text("drawing_id").map(validate_drawing_id).transpose()?;
        let upload = self.read_upload(request).await?;
        let fingerprint = search::fingerprint(&self.app, upload.bytes.clone()).await?;
        let drawing = self
            .app
            .library
            .add(tenant, drawing_id, &upload.file_name, upload.bytes, fingerprint, now())
            .await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "success": true,
                "drawing_id": drawing.drawing_id,
                "file_hash": drawing.file_hash,
                "message": format!("added {} to the library", drawing.file_name),
                "processing_time_ms": (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            }),
        ))
    }

    async fn list_drawings(&self, tenant: &str, request: &Request<Incoming>) -> Reply {
        let query = Query::parse(request.uri().query());
        let limit = query.number("limit", 100u32, 1, 1000)?;
        let offset = query.number("offset", 0u64, 0, i64::MAX as u64)?;
        let (drawings, total) = self.app.library.page(tenant, limit, offset).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "total": total, "limit": limit, "offset": offset, "drawings": drawings }),
        ))
    }

    async fn delete_drawing(&self, tenant: &str, drawing_id: &str) -> Reply {
        if !self.app.library.delete(tenant, drawing_id).await? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "DRAWING_NOT_FOUND",
                format!("no drawing `{drawing_id}` in this library"),
            )
            .with("drawing_id", drawing_id));
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({ "success": true, "drawing_id": drawing_id, "message": "deleted from the library" }),
        ))
    }

    async fn rebuild(&self, tenant: &str) -> Reply {
        let report = self.app.library.rebuild(tenant, self.app.limits).await?;
        let mut message = format!("rebuilt the index from {} drawings", report.drawings);
        if !report.unreadable.is_empty() {
            message.push_str(&format!(
                "; removed drawings whose file is missing or unreadable: {}",
                report.unreadable.join(", ")
            ));
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({ "success": report.unreadable.is_empty(), "message": message }),
        ))
    }

    async fn stats(&self, tenant: &str) -> Reply {
        let stats = self
            .app
            .stats
            .read(tenant)
            .await
            .map_err(|e| ApiError::unavailable("stats", e))?;
        let mut body = serde_json::to_value(stats).map_err(ApiError::internal)?;
        body["tenant_id"] = tenant.into();
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn tenant_health(&self, tenant: &str) -> Reply {
        let (_, drawings) = self.app.library.page(tenant, 1, 0).await?;
        let loaded = self.app.library.loaded();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "status": "healthy",
                "service": SERVICE,
                "version": env!("CARGO_PKG_VERSION"),
                "indexes": { "tenant_drawings": drawings, "loaded_tenants": loaded.tenants, "loaded_drawings": loaded.drawings },
            }),
        ))
    }

    async fn ready(&self) -> Reply {
        let readiness = self.app.readiness().await;
        let checks = readiness.checks;
        let failed: Vec<String> = checks
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect();
        let ready = failed.is_empty();
        let body = json!({
            "ready": ready,
            "reason": if ready { "ok".to_string() } else { failed.join("; ") },
            "checks": checks.iter().map(|(name, r)| (name.to_string(), Value::Bool(r.is_ok()))).collect::<serde_json::Map<_, _>>(),
            "warnings": readiness.warnings,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Ok(json_response(status, &body))
    }

    async fn metrics(&self) -> Reply {
        update_store_gauges(&self.app).await;
        let text = t::metrics_handle().render();
        Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(text)))
            .map_err(ApiError::internal)
    }
}

/// Queue gauges and GC totals are set from the store, so they are right
/// whoever changed the jobs or ran `dedup2d gc`. A store that does not
/// answer in time leaves the last values, so a scrape during an outage
/// still answers within Prometheus's timeout.
pub async fn update_store_gauges(app: &App) {
    const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    let read = async { (app.jobs.counts().await, app.gc.gc_totals().await) };
    let Ok((counts, gc)) = tokio::time::timeout(STORE_TIMEOUT, read).await else {
        return;
    };
    if let Ok(counts) = counts {
        metrics::gauge!(t::JOBS_QUEUED).set(counts.pending as f64);
        metrics::gauge!(t::JOBS_ACTIVE).set(counts.running as f64);
        metrics::gauge!(t::JOB_QUEUE_DEPTH).set((counts.pending + counts.running) as f64);
        metrics::gauge!(t::JOBS_DEAD_LETTER).set(counts.dead as f64);
    }
    if let Ok(gc) = gc {
        crate::gc::export(&gc);
    }
}

fn health() -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &json!({ "status": "healthy", "service": SERVICE, "version": env!("CARGO_PKG_VERSION") }),
    ))
}

fn validate_drawing_id(id: &str) -> Result<String, ApiError> {
    let valid = id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad_parameter(
            "drawing_id",
            "use 1 to 128 of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(MIB) {
        format!("{}MB", bytes / MIB)
    } else {
        format!("{bytes}B")
    }
}

fn job_not_found(job_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "JOB_NOT_FOUND",
        "no such job; it may have expired",
    )
    .with("job_id", job_id)
}

fn forbidden(job_id: &str, operation: &'static str) -> ApiError {
    metrics::counter!(t::TENANT_ACCESS_DENIED_TOTAL, "operation" => operation).increment(1);
    ApiError::new(
        StatusCode::FORBIDDEN,
        "JOB_FORBIDDEN",
        "the job belongs to another tenant",
    )
    .with("job_id", job_id)
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no endpoint at {path}"))
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    let mut response = json_response(error.status, &error.body());
    if let Some(seconds) = error.retry_after {
        response.headers_mut().insert(RETRY_AFTER, seconds.into());
    }
    response
}
