//! Durations, byte counts and dates as people read them, and profile text
//! made safe for a terminal.

/// Seconds with the precision a boot time needs.
pub(crate) fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s.abs() >= 10.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.2}")
    }
}

pub(crate) fn human_ms(ms: f64) -> String {
    let a = ms.abs();
    if !a.is_finite() {
        return "?".into();
    }
    if a == 0.0 {
        return "0 ms".into();
    }
    if a < 10.0 {
        format!("{ms:.1} ms")
    } else if a < 1000.0 {
        format!("{ms:.0} ms")
    } else if a < 100_000.0 {
        format!("{} s", secs(ms))
    } else {
        format!("{:.0} s", ms / 1000.0)
    }
}

pub(super) fn human_ms_signed(ms: f64) -> String {
    if ms > 0.0 {
        format!("+{}", human_ms(ms))
    } else {
        human_ms(ms)
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let u = UNITS[unit];
    if v < 10.0 {
        format!("{v:.2} {u}")
    } else if v < 100.0 {
        format!("{v:.1} {u}")
    } else {
        format!("{v:.0} {u}")
    }
}

pub(super) fn human_bytes_signed(d: i128) -> String {
    let mag = human_bytes(d.unsigned_abs().min(u64::MAX as u128) as u64);
    match d.signum() {
        1 => format!("+{mag}"),
        -1 => format!("-{mag}"),
        _ => mag,
    }
}

pub(super) fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 {
        format!("{:.2}x", b / a)
    } else {
        "-".into()
    }
}

/// Profile text (file names, client ids) is written by nodes; control
/// characters in it must not reach the terminal as escape sequences.
pub(crate) fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix milliseconds (0 = not recorded).
pub(crate) fn utc(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "not recorded".into();
    }
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date, counting in
    // 400-year eras that start on March 1st so leap days fall at the end.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
