//! Wall-clock times as vessel stores and shows them: nanoseconds since the Unix epoch on
//! disk, RFC 3339 (`2026-11-27T03:19:29.123456789Z`) in JSON and logs, and docker's
//! human forms ("Up 5 seconds", "3 minutes ago").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// `2026-11-27T03:19:29.123456789Z`, in UTC.
pub fn rfc3339(nanos: u64) -> String {
    let seconds = nanos / 1_000_000_000;
    let fraction = nanos % 1_000_000_000;
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// How long ago `nanos` was, as docker says it: "Less than a second", "5 seconds",
/// "About a minute", "3 hours", "2 days", "5 weeks", "3 months", "2 years".
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match seconds {
        0 => "Less than a second".to_string(),
        1..60 => plural(seconds, "second"),
        60..120 => "About a minute".to_string(),
        120..3600 => plural(seconds / 60, "minute"),
        3600..7200 => "About an hour".to_string(),
        7200..172_800 => plural(seconds / 3600, "hour"),
        172_800..1_209_600 => plural(seconds / 86_400, "day"),
        1_209_600..5_184_000 => plural(seconds / 604_800, "week"),
        5_184_000..63_072_000 => plural(seconds / 2_592_000, "month"),
        _ => plural(seconds / 31_536_000, "year"),
    }
}

/// The time elapsed since `nanos` (zero if it lies in the future).
pub fn since(nanos: u64) -> Duration {
    Duration::from_nanos(now_nanos().saturating_sub(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T12:34:56.000000007Z: a leap day.
        assert_eq!(rfc3339(1_709_210_096_000_000_007), "2024-02-29T12:34:56.000000007Z");
        assert_eq!(rfc3339(4_102_444_800_000_000_000), "2100-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(Duration::from_millis(300)), "Less than a second");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(59)), "59 seconds");
        assert_eq!(human_duration(Duration::from_secs(61)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600)), "3 hours");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400)), "3 days");
    }
}
