//! Go `time.ParseDuration` syntax (`500ms`, `1m30s`, `1.5h`), parsed with
//! checked arithmetic.
//!
//! `kube::core::Duration::from_str` panics on overflow
//! (`99999999999999999999h`), and the CRD pattern admits such values, so
//! the strings users write never reach it.

use std::time::Duration;

use crate::limits::MAX_DURATION;

/// Why a duration string was refused; each renders as the reason part of an
/// operator-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty")]
    Empty,
    #[error("must not be negative")]
    Negative,
    #[error("expected a number at {at:?}")]
    MissingNumber { at: String },
    #[error("missing unit after {number:?} (use ns, us, ms, s, m or h)")]
    MissingUnit { number: String },
    #[error("unknown unit {unit:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit { unit: String },
    #[error("longer than the maximum of {}h", max.as_secs() / 3600)]
    TooLong { max: Duration },
}

/// Fractional digits beyond this cannot change a nanosecond count of at
/// most [`MAX_DURATION`], and dropping them keeps the arithmetic in `u128`.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses one duration: an optional `+` (a `-` is refused), then one or more
/// `<number><unit>` parts; a lone `0` is zero, as in Go. Anything above
/// [`MAX_DURATION`] is refused, whatever its size.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let max = MAX_DURATION.as_nanos();
    let rest = match text.as_bytes().first() {
        None => return Err(DurationError::Empty),
        Some(b'-') => return Err(DurationError::Negative),
        Some(b'+') => &text[1..],
        Some(_) => text,
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::MissingNumber { at: String::new() });
    }
    let mut total: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let whole_len = digits(rest);
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = digits(f);
                f.split_at(n)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(DurationError::MissingNumber {
                at: rest.to_owned(),
            });
        }
        let unit_len = after
            .bytes()
            .take_while(|b| !b.is_ascii_digit() && *b != b'.')
            .count();
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                let number = &rest[..rest.len() - after.len()];
                return Err(DurationError::MissingUnit {
                    number: number.to_owned(),
                });
            }
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                });
            }
        };
        let too_long = DurationError::TooLong { max: MAX_DURATION };
        // Leading zeros cannot overflow; any other digit past the limit does.
        let mut whole_value: u128 = 0;
        for d in whole.bytes() {
            whole_value = whole_value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d - b'0')))
                .filter(|v| *v <= max)
                .ok_or_else(|| too_long.clone())?;
        }
        let mut part = whole_value
            .checked_mul(unit_nanos)
            .ok_or_else(|| too_long.clone())?;
        let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
        if !fraction.is_empty() {
            let mut numerator: u128 = 0;
            let mut denominator: u128 = 1;
            for d in fraction.bytes() {
                numerator = numerator * 10 + u128::from(d - b'0');
                denominator *= 10;
            }
            // numerator < 10^18 and unit_nanos <= 3.6e12: far below u128::MAX.
            part = part
                .checked_add(numerator * unit_nanos / denominator)
                .ok_or_else(|| too_long.clone())?;
        }
        total = total
            .checked_add(part)
            .filter(|t| *t <= max)
            .ok_or(too_long)?;
        rest = after;
    }
    // total <= MAX_DURATION's nanoseconds, which fit a u64.
    let nanos = u64::try_from(total).map_err(|_| DurationError::TooLong { max: MAX_DURATION })?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn go_syntax_parses_to_the_same_values_as_go() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2h45m0.5s"), Duration::from_millis(9_900_500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0ms"), Duration::ZERO);
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        // Digits below a nanosecond are dropped, as Go does.
        assert_eq!(ok("1.0000000009s"), Duration::from_secs(1));
        assert_eq!(
            ok("000000000000000000000000000001s"),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_maximum_is_accepted_and_anything_above_refused() {
        assert_eq!(ok("24h"), MAX_DURATION);
        assert_eq!(ok("23h59m60s"), MAX_DURATION);
        for text in ["24h1ns", "25h", "1441m", "86401s", "12h12h1s"] {
            assert_eq!(
                parse_duration(text),
                Err(DurationError::TooLong { max: MAX_DURATION }),
                "{text}"
            );
        }
    }

    #[test]
    fn overflowing_values_are_refused_rather_than_panicking() {
        for text in [
            "99999999999999999999h",
            "18446744073709551616ns",
            "340282366920938463463374607431768211456ns",
            "9999999999999999999999999999999999999999999999h",
            "5124095576030431h",
            "1h99999999999999999999h",
            "99999999999999999999.99999999999999999999999999h",
        ] {
            assert!(
                matches!(parse_duration(text), Err(DurationError::TooLong { .. })),
                "{text}: {:?}",
                parse_duration(text)
            );
        }
    }

    #[test]
    fn malformed_values_are_refused_with_a_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Negative));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1s2"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("10 seconds"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        for text in ["s", "+", ".s", "1s.", "1s..5s", "ms1s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
