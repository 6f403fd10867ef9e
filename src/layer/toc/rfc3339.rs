//! The RFC 3339 timestamps of TOC `modtime` fields, as Unix seconds.

/// Unix seconds of an RFC 3339 time such as `2019-08-20T10:30:43Z` or
/// `2021-03-04T05:06:07.5+01:00`; fractions of a second are dropped.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
        )
    };
    let sep = |i: usize, ok: &[u8]| ok.contains(b.get(i)?).then_some(());
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt ")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    // 60 allows a leap second; it lands on the next minute's first second.
    let second = num(17..19)?;
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() => {
            sep(i + 3, b":")?;
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_since_epoch(year, month, day);
    Some(days * 86400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days from 1970-01-01 to a proleptic Gregorian date, counted in 400-year
/// eras (146097 days each) with years starting in March so that the leap day
/// falls at the end of a year.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days lie between 0000-03-01 and 1970-01-01.
    era * 146097 + day_of_era - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTIME: &str = "2019-08-20T10:30:43Z";
    const MTIME_UNIX: i64 = 1566297043;

    #[test]
    fn parses_rfc3339() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            (MTIME, Some(MTIME_UNIX)),
            ("2019-08-20T10:30:43.999999999Z", Some(MTIME_UNIX)),
            ("2019-08-20t12:30:43+02:00", Some(MTIME_UNIX)),
            ("2019-08-20T05:00:43-05:30", Some(MTIME_UNIX)),
            ("0001-01-01T00:00:00Z", Some(-62135596800)), // Go's zero time
            ("2000-02-29T00:00:00Z", Some(951782400)),
            ("2100-03-01T00:00:00Z", Some(4107542400)),
            ("1969-12-31T23:59:59Z", Some(-1)),
            ("2100-02-29T00:00:00Z", None),
            ("2019-13-01T00:00:00Z", None),
            ("2019-08-20T10:30:43", None),
            ("2019-08-20T10:30:43.Z", None),
            ("2019-08-20T10:30:43+0200", None),
            ("2019-08-20T10:30:43Zjunk", None),
            ("2019-8-20T10:30:43Z", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text), want, "{text}");
        }
    }
}
