//! Webhook callbacks: one signed POST to a job's `callback_url` when it
//! ends (CONTRACT §5), delivered from a durable outbox so a crash between
//! the job's end and the POST delays the callback instead of losing it.
//!
//! The job store puts a job in the [`Outbox`] in the same step that ends
//! it (finish, cancel of a running job, a claim that gives up). Deliverers
//! ([`deliver`], running wherever runners run) take a due callback and
//! hold it for [`hold`] seconds: a deliverer that dies mid-send leaves it
//! to be taken again once the hold runs out. Each attempt's outcome is
//! recorded against the attempt count the deliverer saw, so a deliverer
//! whose hold ran out cannot overwrite its successor's record. Receivers
//! may see a retried POST twice; `webhook-id` (the job id) dedupes.

pub mod net;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::jobs::JobError;
use crate::outbound;
use crate::telemetry as t;
use net::{AddressPolicy, Refusal, Rules, VettedResolver};
pub use sign::Event;

/// A response body is read this far, then dropped: receivers owe us a
/// status, not a payload.
const MAX_RESPONSE_BYTES: usize = 4096;
/// A `Retry-After` longer than this is not waited for in full.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Callbacks sent at once by one process.
const PARALLEL_SENDS: usize = 16;
/// How often an idle deliverer looks for due callbacks.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// A callback to send now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub url: String,
    pub event: Event,
    /// Attempts made before this one (the fencing token of its record).
    pub attempts: u32,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        http_status: u16,
    },
    /// Try again at `at` (epoch seconds).
    Retry {
        http_status: Option<u16>,
        error: String,
        at: f64,
    },
    Failed {
        http_status: Option<u16>,
        error: String,
    },
}

impl Attempt {
    /// What the job records of it: the callback status, the HTTP status,
    /// the error, and when to try again.
    pub fn fields(&self) -> (&'static str, Option<u16>, Option<&str>, Option<f64>) {
        match self {
            Attempt::Delivered { http_status } => ("success", Some(*http_status), None, None),
            Attempt::Retry { http_status, error, at } => ("pending", *http_status, Some(error), Some(*at)),
            Attempt::Failed { http_status, error } => ("failed", *http_status, Some(error), None),
        }
    }
}

/// Where callbacks wait: the job store.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// The callback due earliest at `now`, held until `now + hold`; `None`
    /// when nothing is due.
    async fn take_due(&self, now: f64, hold: f64) -> Result<Option<Due>, JobError>;
    /// Records an attempt made after `attempts_before` earlier ones; false
    /// (nothing written) when another deliverer took the callback since.
    async fn record_attempt(
        &self,
        job_id: &str,
        attempts_before: u32,
        attempt: &Attempt,
        now: f64,
    ) -> Result<bool, JobError>;
}

/// CONTRACT §5's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub secret: Option<String>,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub resolve_at_submit: bool,
    pub rules: Rules,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            secret: config.callback_hmac_secret.clone(),
            max_attempts: config.callback_max_attempts,
            backoff_base: config.callback_backoff_base,
            backoff_max: config.callback_backoff_max,
            timeout: config.callback_timeout,
            resolve_at_submit: config.callback_resolve_dns,
            rules: Rules {
                allow_http: config.callback_allow_http,
                allowlist: config.callback_allowlist.clone(),
                addresses: AddressPolicy {
                    block_private: config.callback_block_private_networks,
                    blocked: config.callback_blocked_cidrs.clone(),
                    allowed: config.callback_allowed_cidrs.clone(),
                },
            },
        }
    }

    /// The submit-time check (400 `CALLBACK_URL_INVALID`); sending checks
    /// again, on the address it dials.
    pub async fn check_at_submit(&self, url: &str) -> Result<(), Refusal> {
        let checked = if self.resolve_at_submit {
            self.rules.check_url_resolving(url).await
        } else {
            self.rules.check_url(url)
        };
        checked.map(drop).inspect_err(count_blocked)
    }
}

/// How long a taken callback stays with its deliverer: its POST is over
/// within the timeout, and recording it takes a round trip.
pub fn hold(settings: &Settings) -> f64 {
    settings.timeout.as_secs_f64() * 2.0 + 2.0
}

fn count_blocked(refusal: &Refusal) {
    metrics::counter!(t::CALLBACK_BLOCKED_TOTAL, "reason" => refusal.as_str()).increment(1);
}

/// Sends callbacks: redirects are never followed, proxies never used (the
/// address vetting must see the real destination), names resolve through
/// [`VettedResolver`].
pub struct Sender {
    client: reqwest::Client,
    settings: Settings,
}

impl Sender {
    pub fn new(settings: Settings) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("dedup2d/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(VettedResolver(Arc::new(settings.rules.addresses.clone()))))
            .build()?;
        Ok(Sender { client, settings })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One POST, and what it means for the callback.
    pub async fn attempt(&self, due: &Due, now: f64) -> Attempt {
        let url = match self.settings.rules.check_url(&due.url) {
            Ok(url) => url,
            Err(refusal) => return self.blocked(&refusal),
        };
        let body = due.event.body();
        let mut request = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Dedup-Job-Id", &due.event.job_id)
            .header("X-Dedup-Tenant-Id", &due.event.tenant_id);
        if let Some(secret) = &self.settings.secret {
            for (name, value) in sign::headers(secret, &due.event.job_id, now as u64, &body) {
                request = request.header(name, value);
            }
        }
        let started = Instant::now();
        let sent = request.body(body).send().await;
        metrics::histogram!(t::CALLBACK_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                if let Some(refusal) = refusal_in(&error) {
                    return self.blocked(&refusal);
                }
                return self.retry_or_fail(due, None, format!("request failed: {}", describe(&error)), None, now);
            }
        };
        let status = response.status().as_u16();
        let retry_after = outbound::retry_after(&response);
        drain(response).await;
        match status {
            200..=299 => Attempt::Delivered { http_status: status },
            408 | 425 | 429 | 500..=599 => {
                self.retry_or_fail(due, Some(status), format!("HTTP {status}"), retry_after, now)
            }
            300..=399 => Attempt::Failed {
                http_status: Some(status),
                error: format!("HTTP {status}: redirects are not followed"),
            },
            _ => Attempt::Failed {
                http_status: Some(status),
                error: format!("HTTP {status}"),
            },
        }
    }

    fn blocked(&self, refusal: &Refusal) -> Attempt {
        count_blocked(refusal);
        Attempt::Failed {
            http_status: None,
            error: format!("blocked: {refusal}"),
        }
    }

    fn retry_or_fail(
        &self,
        due: &Due,
        http_status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
        now: f64,
    ) -> Attempt {
        let made = due.attempts + 1;
        if made >= self.settings.max_attempts {
            return Attempt::Failed { http_status, error };
        }
        metrics::counter!(t::CALLBACK_RETRIES_TOTAL).increment(1);
        let backoff = outbound::backoff(self.settings.backoff_base, self.settings.backoff_max, made);
        let wait = backoff.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
        Attempt::Retry {
            http_status,
            error,
            at: now + wait.as_secs_f64(),
        }
    }
}

/// Reads what little of the body we allow, so the connection can be reused
/// when the answer is short and is dropped when it is not.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => return,
        }
    }
}

/// A refusal of the vetting resolver, wherever reqwest wrapped it.
fn refusal_in(error: &reqwest::Error) -> Option<Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        source = cause.source();
    }
    None
}

/// reqwest's message and its causes on one line.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Delivers due callbacks until shutdown, `PARALLEL_SENDS` at a time.
pub async fn deliver(outbox: Arc<dyn Outbox>, sender: Arc<Sender>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(PARALLEL_SENDS));
    let hold = hold(sender.settings());
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let taken = tokio::select! {
            taken = outbox.take_due(crate::app::now(), hold) => taken,
            _ = shutdown.cancelled() => return,
        };
        match taken {
            Ok(Some(due)) => {
                let (outbox, sender) = (outbox.clone(), sender.clone());
                tokio::spawn(async move {
                    send_one(outbox.as_ref(), &sender, due).await;
                    drop(permit);
                });
            }
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(POLL_EVERY) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(error) => {
                drop(permit);
                tracing::warn!(message = "cannot read the callback outbox", %error);
                tokio::select! {
                    _ = tokio::time::sleep(POLL_EVERY * 4) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn send_one(outbox: &dyn Outbox, sender: &Sender, due: Due) {
    let attempt = sender.attempt(&due, crate::app::now()).await;
    let job_id = due.event.job_id.as_str();
    match &attempt {
        Attempt::Delivered { http_status } => {
            metrics::counter!(t::CALLBACKS_TOTAL, "status" => "success").increment(1);
            tracing::info!(message = "callback delivered", job_id, http_status);
        }
        Attempt::Retry { error, at, .. } => {
            tracing::info!(message = "callback will be retried", job_id, %error, in_seconds = at - crate::app::now());
        }
        Attempt::Failed { error, .. } => {
            metrics::counter!(t::CALLBACKS_TOTAL, "status" => "failed").increment(1);
            tracing::warn!(message = "callback failed", job_id, %error);
        }
    }
    match outbox
        .record_attempt(job_id, due.attempts, &attempt, crate::app::now())
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::info!(message = "callback was taken over by another deliverer", job_id),
        // The hold runs out and another deliverer sends it again.
        Err(error) => tracing::warn!(message = "cannot record a callback attempt", job_id, %error),
    }
}
