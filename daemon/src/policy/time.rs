//! Time windows: days of the week and hours of the day in an IANA time zone.
//!
//! The window is judged on the civil (wall-clock) time in its zone, computed
//! from the instant with the tz database, so DST transitions need no special
//! case: on the spring-forward day 02:30 never happens, on the fall-back day
//! 01:30 happens twice and both instants are inside "01:00-02:00".
//!
//! Hours are half-open, `[start, end)`; "24:00" is allowed as an end. A window
//! whose end is before its start crosses midnight, and the part after
//! midnight belongs to the day it started on: "Fri" with "22:00-06:00" allows
//! Friday 23:00 and Saturday 05:00, not Friday 05:00.

use jiff::{Timestamp, civil::Weekday, tz::TimeZone};

/// A compiled `time = { days, hours, tz }`.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    /// Bit `n` set: weekday `n` (Monday = 0) is allowed.
    days: u8,
    /// Minutes after midnight; `None` means all day.
    hours: Option<(u16, u16)>,
    tz: TimeZone,
    tz_name: String,
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const ALL_DAYS: u8 = 0x7f;

impl TimeWindow {
    /// Compiles a window; `tz` defaults to UTC. Errors name the bad part.
    pub fn new(
        days: Option<&str>,
        hours: Option<&str>,
        tz: Option<&str>,
    ) -> Result<TimeWindow, TimeError> {
        let days = match days {
            Some(text) => parse_days(text)?,
            None => ALL_DAYS,
        };
        let hours = hours.map(parse_hours).transpose()?;
        let tz_name = tz.unwrap_or("UTC").to_owned();
        let tz = TimeZone::get(&tz_name).map_err(|e| TimeError::Tz(format!(
            "unknown time zone {tz_name:?} (expected an IANA name such as \"America/New_York\"): {e}"
        )))?;
        Ok(TimeWindow {
            days,
            hours,
            tz,
            tz_name,
        })
    }

    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = self.tz.to_datetime(now);
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let day_allowed = |d: u8| self.days & (1 << d) != 0;
        match self.hours {
            None => day_allowed(day),
            Some((start, end)) if start < end => {
                day_allowed(day) && minute >= start && minute < end
            }
            Some((start, end)) => {
                // Crosses midnight: the early part belongs to yesterday's window.
                (minute >= start && day_allowed(day))
                    || (minute < end && day_allowed((day + 6) % 7))
            }
        }
    }

    /// A short description of the local time, for deny reasons.
    pub fn describe_now(&self, now: Timestamp) -> String {
        let local = self.tz.to_datetime(now);
        format!(
            "{} {:02}:{:02} {}",
            DAY_NAMES[local.weekday().to_monday_zero_offset() as usize],
            local.hour(),
            local.minute(),
            self.tz_name
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0}")]
    Days(String),
    #[error("{0}")]
    Hours(String),
    #[error("{0}")]
    Tz(String),
}

fn day_index(name: &str) -> Option<u8> {
    let lower = name.trim().to_ascii_lowercase();
    let weekday = match lower.as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    };
    Some(weekday.to_monday_zero_offset() as u8)
}

/// "Mon-Fri", "Sat,Sun", "Mon-Wed,Fri", "Fri-Mon" (wraps), "*".
fn parse_days(text: &str) -> Result<u8, TimeError> {
    if text.trim() == "*" {
        return Ok(ALL_DAYS);
    }
    let bad = |part: &str| {
        TimeError::Days(format!(
            "bad day {part:?} in {text:?}; expected days like \"Mon-Fri\" or \"Sat,Sun\""
        ))
    };
    let mut mask = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let from = day_index(from).ok_or_else(|| bad(part))?;
                let to = day_index(to).ok_or_else(|| bad(part))?;
                let mut d = from;
                loop {
                    mask |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day_index(part).ok_or_else(|| bad(part))?,
        }
    }
    Ok(mask)
}

/// "08:00-18:00", "22:00-06:00" (crosses midnight), "00:00-24:00".
fn parse_hours(text: &str) -> Result<(u16, u16), TimeError> {
    let bad = || {
        TimeError::Hours(format!(
            "bad hours {text:?}; expected \"HH:MM-HH:MM\" such as \"08:00-18:00\""
        ))
    };
    let (from, to) = text.split_once('-').ok_or_else(bad)?;
    let minute_of = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let start = minute_of(from).filter(|&m| m < 24 * 60).ok_or_else(bad)?;
    let end = minute_of(to).ok_or_else(bad)?;
    if start == end {
        return Err(TimeError::Hours(format!(
            "hours {text:?} is empty (start equals end); omit `hours` to allow the whole day"
        )));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn day_syntax() {
        assert_eq!(parse_days("Mon-Fri").unwrap(), 0b001_1111);
        assert_eq!(parse_days("Sat,Sun").unwrap(), 0b110_0000);
        assert_eq!(parse_days("Fri-Mon").unwrap(), 0b111_0001);
        assert_eq!(parse_days("mon-wed,fri").unwrap(), 0b001_0111);
        assert!(parse_days("Mon-Fry").is_err());
        assert!(parse_days("").is_err());
    }

    #[test]
    fn hour_syntax() {
        assert_eq!(parse_hours("08:00-18:00").unwrap(), (480, 1080));
        assert_eq!(parse_hours("00:00-24:00").unwrap(), (0, 1440));
        assert!(parse_hours("8-18").is_err());
        assert!(parse_hours("08:00-25:00").is_err());
        assert!(parse_hours("24:00-06:00").is_err());
        assert!(parse_hours("08:00-08:00").is_err());
    }

    #[test]
    fn unknown_zone_is_an_error() {
        let err = TimeWindow::new(None, None, Some("America/Nowhere")).unwrap_err();
        assert!(err.to_string().contains("America/Nowhere"), "{err}");
    }

    #[test]
    fn business_hours_in_new_york() {
        let w = TimeWindow::new(
            Some("Mon-Fri"),
            Some("08:00-18:00"),
            Some("America/New_York"),
        )
        .unwrap();
        // Wednesday 2026-01-14: EST is UTC-5.
        assert!(w.contains(at("2026-01-14T13:00:00Z"))); // 08:00 local
        assert!(!w.contains(at("2026-01-14T12:59:00Z"))); // 07:59
        assert!(!w.contains(at("2026-01-14T23:00:00Z"))); // 18:00, end excluded
        // Saturday.
        assert!(!w.contains(at("2026-01-17T15:00:00Z")));
    }

    #[test]
    fn spring_forward_day_uses_the_new_offset() {
        // 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT (07:00Z).
        let w = TimeWindow::new(None, Some("08:00-18:00"), Some("America/New_York")).unwrap();
        // 08:00 EDT is 12:00Z; a fixed UTC-5 offset would wrongly say 07:00.
        assert!(w.contains(at("2026-03-08T12:00:00Z")));
        assert!(!w.contains(at("2026-03-08T11:59:00Z")));
        // The skipped hour: 06:59Z is 01:59 EST, 07:00Z is 03:00 EDT.
        let night = TimeWindow::new(None, Some("02:00-03:00"), Some("America/New_York")).unwrap();
        assert!(!night.contains(at("2026-03-08T06:59:00Z")));
        assert!(!night.contains(at("2026-03-08T07:00:00Z")));
    }

    #[test]
    fn fall_back_day_repeats_an_hour() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00Z.
        let w = TimeWindow::new(None, Some("01:00-02:00"), Some("America/New_York")).unwrap();
        assert!(w.contains(at("2026-11-01T05:30:00Z"))); // 01:30 EDT
        assert!(w.contains(at("2026-11-01T06:30:00Z"))); // 01:30 EST again
        assert!(!w.contains(at("2026-11-01T07:00:00Z"))); // 02:00 EST
        // 08:00 EST is 13:00Z on that day.
        let day = TimeWindow::new(None, Some("08:00-18:00"), Some("America/New_York")).unwrap();
        assert!(!day.contains(at("2026-11-01T12:30:00Z")));
        assert!(day.contains(at("2026-11-01T13:00:00Z")));
    }

    #[test]
    fn window_crossing_midnight_belongs_to_its_start_day() {
        let w = TimeWindow::new(Some("Fri"), Some("22:00-06:00"), Some("UTC")).unwrap();
        // Friday 2026-01-16.
        assert!(w.contains(at("2026-01-16T23:00:00Z")));
        assert!(w.contains(at("2026-01-17T05:59:00Z"))); // Saturday early
        assert!(!w.contains(at("2026-01-17T06:00:00Z")));
        assert!(!w.contains(at("2026-01-16T05:00:00Z"))); // Friday early: Thursday's
        assert!(!w.contains(at("2026-01-17T23:00:00Z"))); // Saturday night
    }

    #[test]
    fn describe_names_local_time_and_zone() {
        let w = TimeWindow::new(None, None, Some("Europe/Paris")).unwrap();
        assert_eq!(
            w.describe_now(at("2026-01-14T13:05:00Z")),
            "Wed 14:05 Europe/Paris"
        );
    }
}
