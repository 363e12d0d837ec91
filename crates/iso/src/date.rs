//! The one parser for a build time given on the command line (`--date` of `iso create`,
//! `iso repack` and `iso esp`), the calendar limits it keeps, and the UTC calendar conversion
//! the writers use for on-disc dates.

use jiff::civil::{Date, Time};
use jiff::tz::Offset;

/// The first second of year 1 (0001-01-01T00:00:00Z): earlier times have no four-digit year.
pub const MIN_DATE_SECONDS: i64 = -62_135_596_800;
/// The last second jiff represents (9999-12-30T22:00:00Z, so that every UTC offset still
/// gives a year-9999 civil time): volume descriptors hold four-digit years anyway.
pub const MAX_DATE_SECONDS: i64 = 253_402_207_200;

/// A `--date` text that is none of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--date {text:?}: {problem}; give Unix seconds or YYYY-MM-DD[THH:MM[:SS]][Z] (UTC)")]
pub struct DateError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// The UTC calendar date and time of Unix seconds, for the writers' on-disc dates (ISO 9660
/// records and descriptors, Rock Ridge TF). Times beyond what jiff represents (years
/// -9999..=9999) are clamped to its ends; the callers clamp further to what their field holds.
pub fn utc_datetime(unix_seconds: i64) -> jiff::civil::DateTime {
    let clamped = unix_seconds.clamp(
        jiff::Timestamp::MIN.as_second(),
        jiff::Timestamp::MAX.as_second(),
    );
    let instant = jiff::Timestamp::from_second(clamped).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Offset::UTC.to_datetime(instant)
}

/// Parses a build time into Unix seconds (UTC).
///
/// Accepted forms (surrounding spaces are ignored):
/// - Unix seconds, optionally negative, optionally after one `@` (as `date -d @N` takes
///   them): `1700000000`, `@1700000000`, `-86400`;
/// - a calendar date, at midnight UTC: `2023-11-14`;
/// - a date and a time, separated by `T` or one space, with or without seconds and an
///   optional trailing `Z`: `2023-11-14T22:13:20Z`, `2023-11-14 22:13`, `2023-11-14T22:13:20`.
///   Second 60 (a leap second) is read as the first second of the next minute, as POSIX
///   time counts it.
///
/// Refused: more than one `@`; years outside 1..=9999, and times past
/// 9999-12-30T22:00:00Z (the end of jiff's range), whether given as seconds or as a date;
/// months, days, hours, minutes and seconds out of range, including days a month does not
/// have (`2023-02-30`); offsets other than `Z`; anything else.
pub fn parse_date(text: &str) -> Result<i64, DateError> {
    let refuse = |problem: &'static str| DateError {
        text: text.to_string(),
        problem,
    };
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix('@').unwrap_or(trimmed);
    if digits.starts_with('@') {
        return Err(refuse("only one '@' may precede the seconds"));
    }
    if let Ok(seconds) = digits.parse::<i64>() {
        if !(MIN_DATE_SECONDS..=MAX_DATE_SECONDS).contains(&seconds) {
            return Err(refuse(
                "the seconds fall outside year 1 to 9999-12-30T22:00:00Z",
            ));
        }
        return Ok(seconds);
    }
    if digits.len() != trimmed.len() {
        return Err(refuse("'@' must be followed by Unix seconds"));
    }
    let calendar = trimmed.strip_suffix('Z').unwrap_or(trimmed);
    let (day, time) = match calendar.split_once(['T', ' ']) {
        Some((day, time)) => (day, Some(time)),
        None => (calendar, None),
    };
    let date = parse_day(day).ok_or_else(|| refuse("the date is not YYYY-MM-DD"))?;
    let (hour, minute, second) = match time {
        None => (0, 0, 0),
        Some(time) => parse_clock(time).ok_or_else(|| refuse("the time is not HH:MM[:SS]"))?,
    };
    let date = Date::new(date.0, date.1, date.2).map_err(|_| refuse("no such day"))?;
    // A leap second is the next minute's first second: parse :59 and add one.
    let leap = second == 60;
    let clock = Time::new(hour, minute, if leap { 59 } else { second }, 0)
        .map_err(|_| refuse("the time of day is out of range"))?;
    let outside = || refuse("the time falls outside year 1 to 9999-12-30T22:00:00Z");
    let instant = Offset::UTC
        .to_timestamp(date.to_datetime(clock))
        .map_err(|_| outside())?;
    let seconds = instant.as_second() + i64::from(leap);
    if seconds > MAX_DATE_SECONDS {
        return Err(outside());
    }
    Ok(seconds)
}

/// `YYYY-MM-DD` as numbers, with the year in 1..=9999; the calendar check is jiff's.
fn parse_day(day: &str) -> Option<(i16, i8, i8)> {
    let mut parts = day.split('-');
    let (Some(year), Some(month), Some(dom), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let year: i16 = number(year)?;
    if !(1..=9999).contains(&year) {
        return None;
    }
    Some((year, number(month)?, number(dom)?))
}

/// `HH:MM` or `HH:MM:SS` as numbers; ranges are checked by the caller.
fn parse_clock(time: &str) -> Option<(i8, i8, i8)> {
    let mut parts = time.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(m), None, None) => Some((number(h)?, number(m)?, 0)),
        (Some(h), Some(m), Some(s), None) => Some((number(h)?, number(m)?, number(s)?)),
        _ => None,
    }
}

/// Plain decimal digits only (no sign, no spaces), so `-1` cannot pass as an hour.
fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_datetime_of_unix_seconds() {
        let t = utc_datetime(1_700_000_000);
        assert_eq!((t.year(), t.month(), t.day()), (2023, 11, 14));
        assert_eq!((t.hour(), t.minute(), t.second()), (22, 13, 20));
        assert_eq!(utc_datetime(-86_400).year(), 1969);
        assert_eq!(utc_datetime(i64::MAX).year(), 9999);
        assert_eq!(utc_datetime(i64::MIN).year(), -9999);
    }

    #[test]
    fn unix_seconds() {
        assert_eq!(parse_date("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_date(" 1700000000 "), Ok(1_700_000_000));
        assert_eq!(parse_date("-86400"), Ok(-86_400));
    }

    #[test]
    fn unix_seconds_after_one_at_sign() {
        assert_eq!(parse_date("@5"), Ok(5));
        assert_eq!(parse_date("@1700000000"), Ok(1_700_000_000));
    }

    #[test]
    fn calendar_date_is_midnight_utc() {
        assert_eq!(parse_date("1970-01-02"), Ok(86_400));
        assert_eq!(parse_date("2024-02-29"), Ok(1_709_164_800));
    }

    #[test]
    fn date_and_time_with_t_or_space_seconds_and_z_optional() {
        assert_eq!(parse_date("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(parse_date("2023-11-14T22:13:20"), Ok(1_700_000_000));
        assert_eq!(parse_date("2023-11-14 22:13:20"), Ok(1_700_000_000));
        assert_eq!(parse_date("2000-03-01 00:00"), Ok(951_868_800));
        assert_eq!(parse_date("2000-03-01T00:00Z"), Ok(951_868_800));
        assert_eq!(parse_date("2024-01-01T00:00:00"), Ok(1_704_067_200));
    }

    #[test]
    fn leap_second_is_the_next_minute() {
        assert_eq!(parse_date("2016-12-31T23:59:60Z"), Ok(1_483_228_800));
    }

    #[test]
    fn range_is_year_1_to_the_end_of_jiffs_range() {
        assert_eq!(parse_date("0001-01-01"), Ok(MIN_DATE_SECONDS));
        assert_eq!(parse_date("9999-12-30T22:00:00"), Ok(MAX_DATE_SECONDS));
        assert_eq!(MAX_DATE_SECONDS, jiff::Timestamp::MAX.as_second());
        assert!(parse_date("9999-12-31T23:59:59").is_err());
        assert!(parse_date("0000-12-31").is_err());
        assert!(parse_date("10000-01-01").is_err());
        assert!(parse_date("253402207201").is_err());
        assert!(parse_date("-62135596801").is_err());
    }

    #[test]
    fn refuses_two_at_signs_and_at_before_a_calendar_date() {
        assert!(parse_date("@@5").is_err());
        assert!(parse_date("@2023-11-14").is_err());
    }

    #[test]
    fn refuses_out_of_range_fields() {
        assert!(parse_date("2023-13-01").is_err());
        assert!(parse_date("2023-00-01").is_err());
        assert!(parse_date("2023-01-32").is_err());
        assert!(parse_date("2023-02-30").is_err());
        assert!(parse_date("2023-01-01T25:00:00").is_err());
        assert!(parse_date("2023-01-01T24:00").is_err());
        assert!(parse_date("2023-01-01T12:60").is_err());
        assert!(parse_date("2023-01-01T12:00:61").is_err());
        assert!(parse_date("2023-01-01T-1:00:00").is_err());
    }

    #[test]
    fn refuses_other_shapes() {
        for text in [
            "",
            "yesterday",
            "2023-11",
            "2023-11-14-01",
            "2023-11-14T22",
            "2023-11-14T22:13:20:00",
            "2023-11-14T22:13:20+01:00",
            "2023-11-14T22:13:20ZZ",
            "2023-11-14  22:13",
            "+2023-11-14",
        ] {
            let err = parse_date(text).unwrap_err();
            assert!(err.to_string().contains("--date"), "{text:?}: {err}");
        }
    }
}
