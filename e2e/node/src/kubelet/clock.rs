//! Timestamps as the API writes them: `metav1.Time` (RFC 3339, whole seconds) and
//! `metav1.MicroTime` (six fractional digits), both in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2024-05-01T12:00:00Z`.
pub fn time(at: SystemTime) -> String {
    let (days, secs, _) = split(at);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2024-05-01T12:00:00.123456Z`.
pub fn micro_time(at: SystemTime) -> String {
    let (days, secs, micros) = split(at);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn now() -> String {
    time(SystemTime::now())
}

fn split(at: SystemTime) -> (i64, u64, u32) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let total = since.as_secs();
    (
        (total / 86_400) as i64,
        total % 86_400,
        since.subsec_micros(),
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_the_api() {
        let at = UNIX_EPOCH + Duration::from_micros(1_709_210_096_123_456);
        assert_eq!(time(at), "2024-02-29T12:34:56Z");
        assert_eq!(micro_time(at), "2024-02-29T12:34:56.123456Z");
        assert_eq!(time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
