//! Field-level refusals of discovery resources, shared by every proto -> runtime conversion.
//!
//! A sidecar must not trust the wire: a newer or buggy control plane may send an enum value this
//! proxy does not know, a pattern its regex engine refuses, or a number out of range. Each
//! runtime type converts its resource with `TryFrom` and refuses it with a [`FieldError`] that
//! names the field as the CRD spells it (`rules[0].qps.threshold`), so the NACK, and the CRD
//! status condition the control plane derives from it, point at the line of YAML to fix.
//!
//! Pure: no I/O, no knowledge of the resources' meaning.

use std::time::Duration;

use crate::policy::PolicyError;

/// A refused field: where, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field's path in the resource, camelCase (`breakers[1].window`).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Required and empty.
    #[error("must not be empty")]
    Empty,
    /// An enum number this proxy does not know.
    #[error("unknown {what} value {value} (this proxy is older than the control plane?)")]
    UnknownEnum {
        /// The enum's name in the CRD.
        what: &'static str,
        /// The number received.
        value: i32,
    },
    /// A pattern the regex engine refuses.
    #[error("invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex {
        /// The pattern received.
        pattern: String,
        /// The engine's last line of explanation.
        reason: String,
    },
    /// A value outside what the field allows.
    #[error("{reason}, got {value}")]
    OutOfRange {
        /// What the field allows.
        reason: &'static str,
        /// The value received, rendered.
        value: String,
    },
    /// A parameter a limiter or breaker refuses.
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

impl FieldError {
    /// `field` has `problem`.
    pub fn new(field: impl Into<String>, problem: impl Into<Problem>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// `field` holds `value`, outside what `reason` allows.
    pub fn out_of_range(field: impl Into<String>, reason: &'static str, value: String) -> Self {
        Self::new(field, Problem::OutOfRange { reason, value })
    }
}

/// Refuses an empty (or blank) required string.
pub fn non_empty<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, Problem::Empty));
    }
    Ok(value)
}

/// Prost keeps unknown enum numbers as plain `i32`; refuse them rather than silently falling
/// back to the default variant.
pub fn known<E: TryFrom<i32>>(
    field: &str,
    what: &'static str,
    value: i32,
) -> Result<E, FieldError> {
    E::try_from(value).map_err(|_| FieldError::new(field, Problem::UnknownEnum { what, value }))
}

/// Compiles a pattern anchored as the control plane anchors it (`lanemesh_api::convert`), so a
/// pattern is accepted here exactly when the matcher can use it.
pub fn anchored_regex(field: &str, pattern: &str) -> Result<regex::Regex, FieldError> {
    anchored(pattern).map_err(|reason| {
        FieldError::new(
            field,
            Problem::InvalidRegex {
                pattern: pattern.to_owned(),
                reason,
            },
        )
    })
}

/// The one anchoring of match patterns (rule paths, lane conditions); the error is the regex
/// engine's reason, for the caller's own error type.
pub fn anchored(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        // regex errors draw the pattern over several lines; the last says what is wrong.
        e.to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// `None` when absent; refuses negative or denormalised durations, and those above the
/// control plane's own bound (`lanemesh_api::limits::MAX_DURATION`), which the limiters'
/// arithmetic relies on whatever sent the resource.
pub fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, FieldError> {
    let Some(d) = d else { return Ok(None) };
    let refused =
        |reason| FieldError::out_of_range(field, reason, format!("{}s {}ns", d.seconds, d.nanos));
    let parsed = Duration::try_from(*d).map_err(|_| refused("must be a non-negative duration"))?;
    if parsed > lanemesh_api::limits::MAX_DURATION {
        return Err(refused("must be at most 24h"));
    }
    Ok(Some(parsed))
}

/// Refuses a threshold above the control plane's own bound (`lanemesh_api::limits`).
pub fn threshold(field: &str, value: f64) -> Result<f64, FieldError> {
    if value > lanemesh_api::limits::MAX_THRESHOLD {
        return Err(FieldError::out_of_range(
            field,
            "must be at most 1e9",
            value.to_string(),
        ));
    }
    Ok(value)
}

/// Refuses a count above the control plane's own bound (`lanemesh_api::limits`).
pub fn count(field: &str, value: u32) -> Result<u32, FieldError> {
    if value > lanemesh_api::limits::MAX_COUNT {
        return Err(FieldError::out_of_range(
            field,
            "must be at most 1000000000",
            value.to_string(),
        ));
    }
    Ok(value)
}

/// Names the field of a parameter a limiter or breaker refused. `scope` is the path of the
/// rule; the limiter's error already names the parameter (`threshold`, `window`).
pub fn policy<T>(scope: &str, result: Result<T, PolicyError>) -> Result<T, FieldError> {
    result.map_err(|source| FieldError::new(scope, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_start_with_the_field_path() {
        let e = known::<lanemesh_api::proto::Source>("rules[0].hotParams[1].source", "source", 42)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules[0].hotParams[1].source: unknown source value 42 (this proxy is older than the control plane?)"
        );
        let e = anchored_regex("lanes[0].match", "gr(ay").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("lanes[0].match: invalid regular expression \"gr(ay\"")
        );
        assert_eq!(
            non_empty("app", " ").unwrap_err().to_string(),
            "app: must not be empty"
        );
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(duration("window", Some(&negative)).is_err());
        let two_days = prost_types::Duration {
            seconds: 48 * 3600,
            nanos: 0,
        };
        assert!(duration("window", Some(&two_days)).is_err());
        assert!(threshold("qps.threshold", 2e9).is_err());
        assert_eq!(threshold("qps.threshold", 5.0), Ok(5.0));
        assert!(count("concurrency.max", 2_000_000_000).is_err());
        assert_eq!(duration("window", None), Ok(None));
    }
}
