//! The external vision service (`DEDUP2D_ENGINE=vision`), for sites that
//! keep the original's: `POST {DEDUPCAD_VISION_URL}/api/v2/search`
//! (multipart `file, mode, max_results`) answers a CONTRACT §3 search
//! result, which is returned as it is.
//!
//! Calls that get no answer, a 429 or a 5xx are retried with jittered
//! backoff (honouring `Retry-After`), and a circuit breaker stops calling a
//! service that keeps failing: after `failures` consecutive failures it
//! opens for `recovery`, then lets `half_open_calls` calls through; their
//! success closes it, a failure opens it again. While it is open searches
//! fail at once with [`VisionError::Open`] (the API answers 503 with
//! `Retry-After`) instead of waiting out timeouts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Config;
use crate::outbound;
use crate::telemetry as t;

#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub failures_to_open: u32,
    pub recovery: Duration,
    pub half_open_calls: u32,
}

impl Settings {
    /// `None` unless the vision engine is chosen.
    pub fn from_config(config: &Config) -> Option<Settings> {
        let url = config.vision_url.clone()?;
        Some(Settings {
            url: url.trim_end_matches('/').to_string(),
            timeout: config.vision_timeout,
            attempts: config.vision_retry_attempts,
            backoff_base: config.vision_retry_base,
            backoff_max: config.vision_retry_max,
            failures_to_open: config.vision_circuit_failures,
            recovery: config.vision_circuit_recovery,
            half_open_calls: config.vision_circuit_half_open_calls,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("the vision service failed repeatedly; not calling it for {}s", retry_after.as_secs().max(1))]
    Open { retry_after: Duration },
    #[error("the vision service is unavailable: {0}")]
    Unavailable(String),
    #[error("the vision service refused the search: {0}")]
    Refused(String),
}

/// The breaker's state, as `dedupcad_vision_circuit_state` reports it
/// (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed { .. } => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen { .. } => 2.0,
        }
    }
}

struct Breaker {
    state: Mutex<State>,
    failures_to_open: u32,
    recovery: Duration,
    half_open_calls: u32,
}

/// Leave to make one call. It must report how the call went; one dropped
/// unreported (a canceled job, a client gone) gives its trial slot back,
/// so abandoned trials cannot hold the circuit half-open for ever.
struct Permit<'a> {
    breaker: &'a Breaker,
    /// Admitted as one of the half-open trial calls.
    trial: bool,
    reported: bool,
}

impl Permit<'_> {
    fn succeeded(mut self) {
        self.reported = true;
        let trial = self.trial;
        self.breaker.update(|state| match state {
            State::HalfOpen { succeeded, .. } if trial && succeeded + 1 >= self.breaker.half_open_calls => {
                (State::Closed { failures: 0 }, ())
            }
            State::HalfOpen { in_flight, succeeded } if trial => (
                State::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                    succeeded: succeeded + 1,
                },
                (),
            ),
            State::Closed { .. } => (State::Closed { failures: 0 }, ()),
            // A call sent before the circuit opened says nothing of now.
            other => (other, ()),
        })
    }

    fn failed(mut self, now: Instant) {
        self.reported = true;
        let (trial, breaker) = (self.trial, self.breaker);
        breaker.update(|state| match state {
            State::Closed { failures } if failures + 1 < breaker.failures_to_open => {
                (State::Closed { failures: failures + 1 }, ())
            }
            State::Closed { .. } => (
                State::Open {
                    until: now + breaker.recovery,
                },
                (),
            ),
            State::HalfOpen { .. } if trial => (
                State::Open {
                    until: now + breaker.recovery,
                },
                (),
            ),
            other => (other, ()),
        })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.reported || !self.trial {
            return;
        }
        self.breaker.update(|state| match state {
            State::HalfOpen { in_flight, succeeded } => (
                State::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                    succeeded,
                },
                (),
            ),
            other => (other, ()),
        })
    }
}

impl Breaker {
    fn new(settings: &Settings) -> Breaker {
        metrics::gauge!(t::VISION_CIRCUIT_STATE).set(0.0);
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open: settings.failures_to_open,
            recovery: settings.recovery,
            half_open_calls: settings.half_open_calls,
        }
    }

    /// Leave for a call now, or how long to wait.
    fn admit(&self, now: Instant) -> Result<Permit<'_>, VisionError> {
        let trial = self.update(|state| match state {
            State::Open { until } if now < until => (
                state,
                Err(VisionError::Open {
                    retry_after: until - now,
                }),
            ),
            State::Open { .. } => (
                State::HalfOpen {
                    in_flight: 1,
                    succeeded: 0,
                },
                Ok(true),
            ),
            State::HalfOpen { in_flight, succeeded } if in_flight + succeeded < self.half_open_calls => (
                State::HalfOpen {
                    in_flight: in_flight + 1,
                    succeeded,
                },
                Ok(true),
            ),
            // The trial calls are out; the others wait for their verdict.
            State::HalfOpen { .. } => (
                state,
                Err(VisionError::Open {
                    retry_after: Duration::from_secs(1),
                }),
            ),
            closed => (closed, Ok(false)),
        })?;
        Ok(Permit {
            breaker: self,
            trial,
            reported: false,
        })
    }

    fn update<T>(&self, change: impl FnOnce(State) -> (State, T)) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, out) = change(*state);
        if next.gauge() != state.gauge() {
            tracing::warn!(message = "vision circuit changed", from = ?*state, to = ?next);
        }
        *state = next;
        metrics::gauge!(t::VISION_CIRCUIT_STATE).set(next.gauge());
        out
    }
}

/// What one call came to.
enum Call {
    Answer(serde_json::Value),
    /// Worth another try, after at least the `Retry-After` given.
    Transient(String, Option<Duration>),
    Refused(String),
}

pub struct Vision {
    client: reqwest::Client,
    settings: Settings,
    breaker: Breaker,
}

/// A search request's file and options.
pub struct Request<'a> {
    pub file_name: &'a str,
    pub content_type: &'a str,
    pub bytes: Bytes,
    pub mode: &'a str,
    pub max_results: u32,
}

impl Vision {
    pub fn new(settings: Settings) -> Result<Vision, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("dedup2d/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let breaker = Breaker::new(&settings);
        Ok(Vision {
            client,
            settings,
            breaker,
        })
    }

    pub async fn search(&self, request: &Request<'_>) -> Result<serde_json::Value, VisionError> {
        let mut last = String::new();
        for attempt in 1..=self.settings.attempts {
            let permit = self.breaker.admit(Instant::now())?;
            match self.call(request).await {
                Call::Answer(result) => {
                    permit.succeeded();
                    return Ok(result);
                }
                Call::Refused(reason) => {
                    // The service answered: it is up, the request was wrong.
                    permit.succeeded();
                    return Err(VisionError::Refused(reason));
                }
                Call::Transient(reason, retry_after) => {
                    permit.failed(Instant::now());
                    last = reason;
                    let backoff = outbound::backoff(self.settings.backoff_base, self.settings.backoff_max, attempt);
                    let wait = backoff.max(retry_after.unwrap_or_default());
                    // A service that asks for more patience than a search
                    // has gets its answer now: unavailable, try later.
                    if attempt == self.settings.attempts || wait > self.settings.backoff_max {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Err(VisionError::Unavailable(last))
    }

    async fn call(&self, request: &Request<'_>) -> Call {
        let part = reqwest::multipart::Part::stream(request.bytes.clone())
            .file_name(request.file_name.to_string())
            .mime_str(request.content_type)
            .unwrap_or_else(|_| reqwest::multipart::Part::stream(request.bytes.clone()));
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("mode", request.mode.to_string())
            .text("max_results", request.max_results.to_string());
        let started = Instant::now();
        let sent = self
            .client
            .post(format!("{}/api/v2/search", self.settings.url))
            .multipart(form)
            .send()
            .await;
        let call = match sent {
            Err(error) => Call::Transient(error.to_string(), None),
            Ok(response) => answer(response).await,
        };
        let status = match call {
            Call::Answer(_) => "success",
            Call::Transient(..) => "error",
            Call::Refused(_) => "refused",
        };
        metrics::counter!(t::VISION_REQUESTS_TOTAL, "status" => status).increment(1);
        metrics::histogram!(t::VISION_REQUEST_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        call
    }
}

async fn answer(response: reqwest::Response) -> Call {
    let status = response.status().as_u16();
    let retry_after = outbound::retry_after(&response);
    match status {
        200..=299 => match response.json::<serde_json::Value>().await {
            Ok(result) if result.is_object() => Call::Answer(result),
            Ok(_) => Call::Transient("the answer is not a search result".into(), None),
            Err(e) => Call::Transient(format!("the answer does not read: {e}"), None),
        },
        408 | 429 | 500..=599 => Call::Transient(format!("HTTP {status}"), retry_after),
        _ => Call::Refused(format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            url: "http://vision".into(),
            timeout: Duration::from_secs(60),
            attempts: 2,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            failures_to_open: 5,
            recovery: Duration::from_secs(30),
            half_open_calls: 2,
        }
    }

    fn state(breaker: &Breaker) -> State {
        *breaker.state.lock().unwrap()
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_closes_after_its_trials() {
        let breaker = Breaker::new(&settings());
        let start = Instant::now();
        for _ in 0..4 {
            breaker.admit(start).unwrap().failed(start);
        }
        breaker.admit(start).unwrap().succeeded();
        // A call sent before the circuit opened, answering after.
        let late = breaker.admit(start).unwrap();
        for _ in 0..5 {
            breaker.admit(start).unwrap().failed(start);
        }
        late.succeeded();
        let Err(VisionError::Open { retry_after }) = breaker.admit(start + Duration::from_secs(10)) else {
            panic!("open")
        };
        assert_eq!(retry_after, Duration::from_secs(20));
        let later = start + Duration::from_secs(31);
        let (first, second) = (breaker.admit(later).unwrap(), breaker.admit(later).unwrap());
        assert!(breaker.admit(later).is_err(), "only two trial calls");
        first.succeeded();
        second.succeeded();
        assert_eq!(state(&breaker), State::Closed { failures: 0 });

        // A failed trial opens it again.
        for _ in 0..5 {
            breaker.admit(later).unwrap().failed(later);
        }
        let again = later + Duration::from_secs(31);
        breaker.admit(again).unwrap().failed(again);
        assert!(matches!(breaker.admit(again), Err(VisionError::Open { .. })));
    }

    #[test]
    fn trials_dropped_unreported_give_their_slot_back() {
        let breaker = Breaker::new(&settings());
        let start = Instant::now();
        for _ in 0..5 {
            breaker.admit(start).unwrap().failed(start);
        }
        let later = start + Duration::from_secs(31);
        drop(breaker.admit(later).unwrap());
        drop(breaker.admit(later).unwrap());
        let (first, second) = (breaker.admit(later).unwrap(), breaker.admit(later).unwrap());
        first.succeeded();
        second.succeeded();
        assert_eq!(state(&breaker), State::Closed { failures: 0 });
    }
}
