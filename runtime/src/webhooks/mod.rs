//! Signed webhooks, the library half: signing and verifying ([`signing`]), the guard that
//! keeps callback URLs away from internal addresses ([`ssrf`]), their configuration and the
//! retry schedule. Storage, delivery workers and HTTP routes build on these elsewhere.

pub mod delivery;
pub mod fair;
pub mod signing;
pub mod ssrf;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::ssrf::{AllowlistError, UrlGuard};

/// `[webhooks]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Addresses that callbacks may reach although they are internal (loopback, private,
    /// link-local, ...): CIDR blocks such as `10.0.0.0/8` or single addresses such as
    /// `127.0.0.1`. Empty by default: callbacks go only to public addresses.
    pub allow_private: Vec<String>,
    /// Seconds one delivery attempt may take, connecting included.
    pub timeout_s: u64,
    /// Seconds to wait before each retry after a failed delivery; when the list is used up the
    /// message is given up. The default follows Standard Webhooks senders such as Svix: 5 s,
    /// 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, so eight attempts over about 27 hours.
    pub retry_schedule_s: Vec<u64>,
    /// Each delay is scaled by a random factor within `1 ± jitter`, so that receivers that
    /// failed together are not retried together. Between 0 and 1.
    pub jitter: f64,
    /// Largest payload accepted for delivery; larger ones are refused when enqueued.
    pub max_payload_bytes: usize,
    /// How far an incoming signed trigger's `webhook-timestamp` may be from now, either way,
    /// in seconds; older ones are refused as possible replays.
    pub trigger_tolerance_s: u64,
    /// How long, in seconds, the receipt of an accepted trigger message is kept; a message
    /// seen again while its receipt is kept is refused as a replay. GitHub signs no
    /// timestamp, so a captured GitHub delivery is refused only while its receipt is kept.
    /// The default, 3 days, covers GitHub's redelivery window and Stripe's retries, and is
    /// longer than Standard Webhooks senders such as Svix retry (about 27 hours). At least
    /// twice `trigger_tolerance_s`, so that a Standard Webhooks message is refused as stale
    /// before its receipt is forgotten.
    pub trigger_receipt_retention_s: u64,
    /// How many of the node's delivery slots (16) one tenant's deliveries may hold at once,
    /// so that a tenant whose receiver is slow or stalled cannot delay other tenants'
    /// deliveries. Positive.
    pub max_in_flight_per_tenant: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_private: Vec::new(),
            timeout_s: 10,
            retry_schedule_s: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            jitter: 0.2,
            max_payload_bytes: 256 * 1024,
            trigger_tolerance_s: 300,
            trigger_receipt_retention_s: 3 * 86_400,
            max_in_flight_per_tenant: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("webhooks.timeout_s must be positive")]
    ZeroTimeout,
    #[error("webhooks.jitter must be between 0 and 1, not {0}")]
    JitterOutOfRange(f64),
    #[error("webhooks.max_payload_bytes must be positive")]
    ZeroPayloadLimit,
    #[error(
        "webhooks.trigger_receipt_retention_s ({retention_s}) must be at least twice \
         webhooks.trigger_tolerance_s ({tolerance_s})"
    )]
    ShortReceiptRetention { retention_s: u64, tolerance_s: u64 },
    #[error("webhooks.max_in_flight_per_tenant must be positive")]
    ZeroInFlightCap,
    #[error("webhooks.{0}")]
    Allowlist(#[from] AllowlistError),
}

impl WebhookConfig {
    /// Checks what serde cannot, for start-up.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        if self.timeout_s == 0 {
            return Err(WebhookConfigError::ZeroTimeout);
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(WebhookConfigError::JitterOutOfRange(self.jitter));
        }
        if self.max_payload_bytes == 0 {
            return Err(WebhookConfigError::ZeroPayloadLimit);
        }
        if self.trigger_receipt_retention_s < self.trigger_tolerance_s.saturating_mul(2) {
            return Err(WebhookConfigError::ShortReceiptRetention {
                retention_s: self.trigger_receipt_retention_s,
                tolerance_s: self.trigger_tolerance_s,
            });
        }
        if self.max_in_flight_per_tenant == 0 {
            return Err(WebhookConfigError::ZeroInFlightCap);
        }
        self.url_guard()?;
        Ok(())
    }

    /// The SSRF guard for `allow_private`.
    pub fn url_guard(&self) -> Result<UrlGuard, AllowlistError> {
        UrlGuard::new(&self.allow_private)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    pub fn trigger_tolerance(&self) -> Duration {
        Duration::from_secs(self.trigger_tolerance_s)
    }

    /// How long an accepted trigger message's receipt is kept.
    pub fn trigger_receipt_retention(&self) -> Duration {
        Duration::from_secs(self.trigger_receipt_retention_s)
    }
}

/// How long to wait before the next delivery of a message whose deliveries have failed
/// `attempt` times: zero for the first delivery (`attempt` 0), then `schedule[attempt - 1]`
/// seconds scaled by `1 + jitter * (2 * rand - 1)`, that is within `± jitter` of the scheduled
/// delay. `None` once the schedule is used up: the message is given up.
///
/// `rand` is a uniform sample from `[0, 1)` supplied by the caller, so that this stays pure and
/// testable; out-of-range `rand` and `jitter` are clamped to `[0, 1]`.
pub fn next_attempt_delay(
    schedule: &[u64],
    attempt: usize,
    jitter: f64,
    rand: f64,
) -> Option<Duration> {
    let Some(retry) = attempt.checked_sub(1) else {
        return Some(Duration::ZERO);
    };
    let base = *schedule.get(retry)? as f64;
    // `clamp` lets NaN through, and a NaN delay cannot become a Duration.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let rand = if rand.is_nan() {
        0.5
    } else {
        rand.clamp(0.0, 1.0)
    };
    let factor = 1.0 + jitter * (2.0 * rand - 1.0);
    Some(Duration::try_from_secs_f64(base * factor).unwrap_or(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: &[u64] = &[5, 300, 1800, 7200, 18000, 36000, 36000];

    #[test]
    fn the_first_delivery_is_immediate_and_retries_follow_the_schedule() {
        assert_eq!(
            next_attempt_delay(SCHEDULE, 0, 0.2, 0.9),
            Some(Duration::ZERO)
        );
        for (failed, &seconds) in SCHEDULE.iter().enumerate() {
            assert_eq!(
                next_attempt_delay(SCHEDULE, failed + 1, 0.0, 0.9),
                Some(Duration::from_secs(seconds))
            );
        }
        assert_eq!(
            next_attempt_delay(SCHEDULE, SCHEDULE.len() + 1, 0.2, 0.5),
            None
        );
        assert_eq!(next_attempt_delay(&[], 1, 0.2, 0.5), None);
    }

    #[test]
    fn jitter_spreads_the_delay_symmetrically() {
        let at = |rand| next_attempt_delay(SCHEDULE, 2, 0.2, rand).unwrap();
        assert_eq!(at(0.0), Duration::from_secs(240));
        assert_eq!(at(0.5), Duration::from_secs(300));
        assert!(at(0.999_999) < Duration::from_secs(360));
        assert!(at(0.999_999) > Duration::from_secs(359));
        for i in 0..100 {
            let d = at(i as f64 / 100.0);
            assert!(d >= Duration::from_secs(240) && d < Duration::from_secs(360));
        }
    }

    #[test]
    fn out_of_range_inputs_are_clamped() {
        assert_eq!(
            next_attempt_delay(SCHEDULE, 2, 5.0, 0.0),
            Some(Duration::ZERO)
        );
        assert_eq!(
            next_attempt_delay(SCHEDULE, 2, -1.0, 0.0),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            next_attempt_delay(SCHEDULE, 2, 0.2, 7.0),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            next_attempt_delay(SCHEDULE, 2, f64::NAN, f64::NAN),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            next_attempt_delay(SCHEDULE, 2, 0.2, f64::NAN),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn the_default_schedule_covers_about_a_day() {
        let config = WebhookConfig::default();
        config.validate().unwrap();
        let total: u64 = config.retry_schedule_s.iter().sum();
        assert!((86_400..=2 * 86_400).contains(&total), "{total}");
    }

    #[test]
    fn config_parses_and_refuses_unknown_fields_and_bad_values() {
        let config: WebhookConfig =
            serde_json::from_str(r#"{"allow_private": ["127.0.0.1/32"], "timeout_s": 3}"#).unwrap();
        assert_eq!(config.timeout(), Duration::from_secs(3));
        assert_eq!(config.jitter, 0.2);
        assert!(serde_json::from_str::<WebhookConfig>(r#"{"timeout": 3}"#).is_err());

        let bad = |edit: fn(&mut WebhookConfig)| {
            let mut config = WebhookConfig::default();
            edit(&mut config);
            config.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.timeout_s = 0), WebhookConfigError::ZeroTimeout);
        assert_eq!(
            bad(|c| c.jitter = 1.5),
            WebhookConfigError::JitterOutOfRange(1.5)
        );
        assert_eq!(
            bad(|c| c.max_payload_bytes = 0),
            WebhookConfigError::ZeroPayloadLimit
        );
        assert!(matches!(
            bad(|c| c.allow_private = vec!["intranet".into()]),
            WebhookConfigError::Allowlist(_)
        ));
    }

    #[test]
    fn receipts_are_kept_days_and_at_least_twice_the_tolerance() {
        let config = WebhookConfig::default();
        assert_eq!(config.trigger_receipt_retention_s, 259_200);
        assert_eq!(
            config.trigger_receipt_retention(),
            Duration::from_secs(3 * 86_400)
        );
        // Longer than a Standard Webhooks sender retries (about 27 hours).
        let retries: u64 = config.retry_schedule_s.iter().sum();
        assert!(config.trigger_receipt_retention_s > retries);

        let with = |retention_s: u64, tolerance_s: u64| {
            let config = WebhookConfig {
                trigger_receipt_retention_s: retention_s,
                trigger_tolerance_s: tolerance_s,
                ..WebhookConfig::default()
            };
            config.validate()
        };
        assert_eq!(with(600, 300), Ok(()));
        assert_eq!(
            with(599, 300),
            Err(WebhookConfigError::ShortReceiptRetention {
                retention_s: 599,
                tolerance_s: 300
            })
        );
        assert!(with(0, 300).is_err());
        let parsed: WebhookConfig =
            serde_json::from_str(r#"{"trigger_receipt_retention_s": 86400}"#).unwrap();
        assert_eq!(
            parsed.trigger_receipt_retention(),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn the_in_flight_cap_per_tenant_is_a_positive_share_of_the_slots() {
        let config = WebhookConfig::default();
        assert_eq!(config.max_in_flight_per_tenant, 4);
        let zero = WebhookConfig {
            max_in_flight_per_tenant: 0,
            ..WebhookConfig::default()
        };
        assert_eq!(zero.validate(), Err(WebhookConfigError::ZeroInFlightCap));
        let parsed: WebhookConfig =
            serde_json::from_str(r#"{"max_in_flight_per_tenant": 2}"#).unwrap();
        assert_eq!(parsed.max_in_flight_per_tenant, 2);
        parsed.validate().unwrap();
    }
}
