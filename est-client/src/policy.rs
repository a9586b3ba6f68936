//! When to renew: Azure IoT Edge's `auto_renew` knobs.
//!
//! `threshold` is how much of the lifetime may pass before renewing (`80%`),
//! or how long before expiry to renew (`2d`, `30min`); `retry` is how long to
//! wait after a failed attempt, as a share of the lifetime (`4%`) or a duration.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// A share of the certificate's lifetime, or a fixed duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// Percentage of the lifetime (0–100).
    Percent(f64),
    /// A fixed duration.
    Fixed(Duration),
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            let value: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a percentage"))?;
            if !(0.0..=100.0).contains(&value) || value == 0.0 {
                return Err(format!(
                    "`{text}`: a percentage must be above 0 and at most 100"
                ));
            }
            return Ok(Span::Percent(value));
        }
        let duration = humantime::parse_duration(&text.replace("day", "d").replace("min", "m"))
            .map_err(|_| {
                format!("`{text}` is neither a percentage (80%) nor a duration (2d, 30min, 90s)")
            })?;
        Ok(Span::Fixed(duration))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Renewal settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRenew {
    /// Renew after this much of the lifetime, or this long before expiry. Default 80%.
    #[serde(default = "default_threshold")]
    pub threshold: Span,
    /// Wait this long after a failure (with ±25% jitter). Default 4%.
    #[serde(default = "default_retry")]
    pub retry: Span,
    /// Make a new key pair at each renewal. Default false.
    #[serde(default)]
    pub rotate_key: bool,
}

impl Default for AutoRenew {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            retry: default_retry(),
            rotate_key: false,
        }
    }
}

fn default_threshold() -> Span {
    Span::Percent(80.0)
}
fn default_retry() -> Span {
    Span::Percent(4.0)
}

impl AutoRenew {
    /// The moment a certificate valid from `not_before` to `not_after` is due.
    pub fn due_at(&self, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        match self.threshold {
            Span::Percent(p) => not_before + lifetime.mul_f64(p / 100.0),
            Span::Fixed(before_expiry) => not_after
                .checked_sub(before_expiry)
                .unwrap_or(not_before)
                .max(not_before),
        }
    }

    /// Wait after a failed attempt, before jitter; at least one second.
    pub fn retry_interval(&self, not_before: SystemTime, not_after: SystemTime) -> Duration {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let base = match self.retry {
            Span::Percent(p) => lifetime.mul_f64(p / 100.0),
            Span::Fixed(d) => d,
        };
        base.max(Duration::from_secs(1))
    }
}

/// `interval` scaled by a random factor in [0.75, 1.25], so a fleet does not retry in lockstep.
pub fn with_jitter(interval: Duration) -> Duration {
    use rand::Rng;
    interval.mul_f64(rand::thread_rng().gen_range(0.75..=1.25))
}

/// Share of the lifetime that has passed at `now`, in percent (may exceed 100).
pub fn lifetime_used(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> f64 {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or_default()
        .as_secs_f64();
    if lifetime == 0.0 {
        return 100.0;
    }
    let elapsed = match now.duration_since(not_before) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    elapsed / lifetime * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iot_edge_units() {
        assert_eq!("80%".parse::<Span>().unwrap(), Span::Percent(80.0));
        assert_eq!(
            "30min".parse::<Span>().unwrap(),
            Span::Fixed(Duration::from_secs(1800))
        );
        assert_eq!(
            "2day".parse::<Span>().unwrap(),
            Span::Fixed(Duration::from_secs(172_800))
        );
        assert_eq!(
            "2d".parse::<Span>().unwrap(),
            Span::Fixed(Duration::from_secs(172_800))
        );
        assert!("0%".parse::<Span>().is_err());
        assert!("120%".parse::<Span>().is_err());
        assert!("soon".parse::<Span>().is_err());
    }

    #[test]
    fn due_and_retry_follow_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        let policy = AutoRenew::default();
        assert_eq!(policy.due_at(start, end), start + Duration::from_secs(800));
        assert_eq!(policy.retry_interval(start, end), Duration::from_secs(40));
        let fixed = AutoRenew {
            threshold: Span::Fixed(Duration::from_secs(100)),
            retry: Span::Fixed(Duration::from_secs(5)),
            rotate_key: true,
        };
        assert_eq!(fixed.due_at(start, end), start + Duration::from_secs(900));
        assert_eq!(fixed.retry_interval(start, end), Duration::from_secs(5));
        assert!((lifetime_used(start, end, start + Duration::from_secs(250)) - 25.0).abs() < 1e-9);
        let jittered = with_jitter(Duration::from_secs(100));
        assert!(jittered >= Duration::from_secs(75) && jittered <= Duration::from_secs(125));
    }
}
