//! What dedup2d's outbound HTTP clients (webhook callbacks, the vision
//! service) share: how long a server asked us to wait, and seed 004's
//! jittered exponential backoff.

use std::time::{Duration, SystemTime};

/// A `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// `base * 2^(n-1)` up to `max`, times a jitter in [0.9, 1.1), so peers
/// that failed together are not retried together (seed 004's formula).
pub fn backoff(base: Duration, max: Duration, attempts_made: u32) -> Duration {
    base.saturating_mul(1u32 << attempts_made.saturating_sub(1).min(20))
        .min(max)
        .mul_f64(0.9 + 0.2 * crate::runner::unit_random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_maximum_with_a_tenth_of_jitter() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(10));
        for (made, expected) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (40, 10.0)] {
            let wait = backoff(base, max, made).as_secs_f64();
            assert!(wait >= expected * 0.9 && wait < expected * 1.1, "{made}: {wait}");
        }
    }
}
