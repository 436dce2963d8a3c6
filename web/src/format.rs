//! Prices, counts and times as people read them (server-rendered; the scripts re-render
//! times in the reader's zone).

/// Cents as a price: `1999` → `"19.99"`.
pub fn price(cents: u64) -> String {
    format!("{}.{:02}", thousands(cents / 100), cents % 100)
}

/// A count with thousands separators: `1234567` → `"1,234,567"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`; times past what the
/// calendar library holds (jiff's `Timestamp::MAX`, 9999-12-30 22:00 UTC) show as that.
pub fn utc(ms: u64) -> String {
    let ts = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration in ms as `1h 02m 03s`, `2m 05s` or `7s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_and_counts() {
        assert_eq!(price(0), "0.00");
        assert_eq!(price(1999), "19.99");
        assert_eq!(price(123_456_789), "1,234,567.89");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2026-11-27 20:00:00 UTC.
        assert_eq!(utc(1_795_809_600_000), "2026-11-27 20:00:00 UTC");
        // A leap day.
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(u64::MAX), "9999-12-30 22:00:00 UTC");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(7_400), "7s");
        assert_eq!(duration(125_000), "2m 05s");
        assert_eq!(duration(3_723_000), "1h 02m 03s");
    }
}
