//! Time formats of the Docker API: RFC 3339 with nanoseconds, and the
//! human durations `docker ps` shows (go-units' `HumanDuration`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::manager::logs::{format_time, parse_time};

/// Go's zero time, which Docker prints for "never".
pub const ZERO: &str = "0001-01-01T00:00:00Z";

/// `2026-11-23T17:21:37.123456789Z`; [`ZERO`] for `None`.
pub fn rfc3339(t: Option<SystemTime>) -> String {
    t.map_or_else(|| ZERO.to_owned(), format_time)
}

/// Unix seconds (0 for `None` or before 1970).
pub fn unix(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// An RFC 3339 time (image `created` fields) as unix seconds; 0 when it
/// does not parse.
pub fn parse_rfc3339(s: &str) -> i64 {
    unix(parse_time(s))
}

/// go-units' `HumanDuration`: "Less than a second", "5 seconds",
/// "About a minute", "3 hours", ...
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let mins = secs / 60;
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if mins == 1 => "About a minute".into(),
        _ if mins < 60 => format!("{mins} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// Time elapsed since `t` (zero if in the future).
pub fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_795_454_497, 5);
        assert_eq!(rfc3339(Some(t)), "2026-11-23T17:21:37.000000005Z");
        assert_eq!(rfc3339(None), ZERO);
        assert_eq!(parse_rfc3339("2026-11-23T17:21:37.5Z"), 1_795_454_497);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), 0);
        assert_eq!(parse_rfc3339("garbage"), 0);
    }

    #[test]
    fn human_durations_match_go_units() {
        assert_eq!(human(Duration::from_millis(300)), "Less than a second");
        assert_eq!(human(Duration::from_secs(1)), "1 second");
        assert_eq!(human(Duration::from_secs(45)), "45 seconds");
        assert_eq!(human(Duration::from_secs(90)), "About a minute");
        assert_eq!(human(Duration::from_secs(600)), "10 minutes");
        assert_eq!(human(Duration::from_secs(3600)), "About an hour");
        assert_eq!(human(Duration::from_secs(5 * 3600)), "5 hours");
        assert_eq!(human(Duration::from_secs(3 * 86400)), "3 days");
    }
}
