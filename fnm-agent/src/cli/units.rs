//! Human units for the CLI and `top`: k/M/G counts, bit rates, byte sizes, durations and local
//! times. The API keeps SI base units (packets/s, bytes/s, seconds, UNIX times); only what a
//! person reads goes through here.

/// A count or rate with a k/M/G/T suffix and about three significant digits: `950`, `12.3k`,
/// `1.20M`. Negative, NaN and infinite values (never produced by the agent) show as `-`.
pub fn si(value: f64) -> String {
    scaled(value, &["", "k", "M", "G", "T"])
}

/// A packet rate: [`si`] without a unit (the column says pps).
pub fn pps(value: f64) -> String {
    si(value)
}

/// A bit rate from bytes per second, with its unit: `0 bit/s`, `812 kbit/s`, `95.0 Mbit/s`,
/// `1.25 Gbit/s`.
pub fn bits_per_second(bytes_per_second: f64) -> String {
    scaled(
        bytes_per_second * 8.0,
        &[" bit/s", " kbit/s", " Mbit/s", " Gbit/s", " Tbit/s"],
    )
}

/// A size in bytes with an SI unit: `512 B`, `12.3 kB`, `4.00 MB`.
pub fn bytes(value: u64) -> String {
    scaled(value as f64, &[" B", " kB", " MB", " GB", " TB"])
}

fn scaled(value: f64, units: &[&str]) -> String {
    if !value.is_finite() || value < 0.0 {
        return "-".into();
    }
    let mut v = value;
    let mut i = 0;
    // Round first, so 999.96 shows as 1.00k and not 1000.
    while i + 1 < units.len() && round3(v) >= 1000.0 {
        v /= 1000.0;
        i += 1;
    }
    let text = if i == 0 {
        format!("{:.0}", v)
    } else if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    format!("{text}{}", units[i])
}

/// `v` rounded as it will be printed with three significant digits.
fn round3(v: f64) -> f64 {
    if v < 9.995 {
        (v * 100.0).round() / 100.0
    } else if v < 99.95 {
        (v * 10.0).round() / 10.0
    } else {
        v.round()
    }
}

/// A duration in its two largest units: `0s`, `42s`, `29m 12s`, `3h 04m`, `2d 03h`.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// When something ends, relative to `now` (both seconds since the epoch): `in 29m 12s`,
/// `expired` once past, `never` without an end.
pub fn expiry(expires: Option<u64>, now: u64) -> String {
    match expires {
        None => "never".into(),
        Some(e) if e <= now => "expired".into(),
        Some(e) => format!("in {}", duration(e - now)),
    }
}

/// A UNIX time (seconds) as local date and time, `2026-12-04 23:55:12`, in the zone the C
/// library is set to (`TZ`, `/etc/localtime`). Through `localtime_r` rather than chrono's
/// `Local`, whose macOS zone lookup links CoreFoundation, which the cross-link has not got.
pub fn local_time(unix_seconds: u64) -> String {
    let Ok(t) = libc::time_t::try_from(unix_seconds) else {
        return "-".into();
    };
    // SAFETY: `tm` is plain data that localtime_r fills; both pointers are valid for the call
    // and localtime_r keeps neither.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return "-".into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// A UNIX time in milliseconds as [`local_time`].
pub fn local_time_ms(unix_ms: u64) -> String {
    local_time(unix_ms / 1000)
}

/// Seconds since the UNIX epoch now.
pub use crate::bans::unix_now as now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_three_significant_digits_and_a_suffix() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(7.4), "7");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(999.4), "999");
        assert_eq!(si(999.6), "1.00k");
        assert_eq!(si(1000.0), "1.00k");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(123_456.0), "123k");
        assert_eq!(si(1_200_000.0), "1.20M");
        assert_eq!(si(29_412.0), "29.4k");
        assert_eq!(si(3.2e9), "3.20G");
        assert_eq!(si(5e15), "5000T");
        assert_eq!(si(-1.0), "-");
        assert_eq!(si(f64::NAN), "-");
        assert_eq!(pps(2500.0), "2.50k");
    }

    #[test]
    fn bit_rates_come_from_bytes_per_second() {
        assert_eq!(bits_per_second(0.0), "0 bit/s");
        assert_eq!(bits_per_second(100.0), "800 bit/s");
        assert_eq!(bits_per_second(125.0), "1.00 kbit/s");
        assert_eq!(bits_per_second(12_500_000.0), "100 Mbit/s");
        assert_eq!(bits_per_second(11_875_000.0), "95.0 Mbit/s");
        assert_eq!(bits_per_second(156_250_000.0), "1.25 Gbit/s");
        assert_eq!(bits_per_second(1.25e12), "10.0 Tbit/s");
    }

    #[test]
    fn byte_sizes_use_si_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12_345), "12.3 kB");
        assert_eq!(bytes(4_000_000), "4.00 MB");
        assert_eq!(bytes(u64::MAX), "18446744 TB");
    }

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(60), "1m 00s");
        assert_eq!(duration(29 * 60 + 12), "29m 12s");
        assert_eq!(duration(1800), "30m 00s");
        assert_eq!(duration(3 * 3600 + 4 * 60 + 59), "3h 04m");
        assert_eq!(duration(2 * 86_400 + 3 * 3600), "2d 03h");
        assert_eq!(duration(u64::MAX), "213503982334601d 07h");
    }

    #[test]
    fn expiries_are_relative_to_now() {
        assert_eq!(expiry(None, 1000), "never");
        assert_eq!(expiry(Some(1000 + 1752), 1000), "in 29m 12s");
        assert_eq!(expiry(Some(1000), 1000), "expired");
        assert_eq!(expiry(Some(10), 1000), "expired");
    }

    #[test]
    fn local_times_are_formatted_in_the_local_zone() {
        // Whatever the machine's zone, the date is within a day of the UTC one.
        let t = local_time(1_700_000_000);
        assert_eq!(t.len(), "2023-11-14 22:13:20".len(), "{t}");
        assert!(t.starts_with("2023-11-1"), "{t}");
        assert_eq!(local_time_ms(1_700_000_000_999), t);
        assert_eq!(local_time(u64::MAX), "-");
    }
}
