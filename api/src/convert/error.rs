//! Typed validation errors that name the offending field.

use std::fmt;

/// Why a field's value was refused. Each variant renders as an
/// operator-facing sentence that follows the field path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    #[error("required")]
    Required,
    #[error("must not be empty")]
    Empty,
    #[error("must be >= {min}, got {value}")]
    TooSmall { min: f64, value: f64 },
    #[error("must be <= {max}, got {value}")]
    TooLarge { max: f64, value: f64 },
    #[error("must be a ratio in (0, 1], got {value}")]
    NotARatio { value: f64 },
    #[error("must be a finite number, got {value}")]
    NotFinite { value: f64 },
    #[error("invalid duration {value:?}: {reason} (use Go syntax such as 500ms, 1s, 1m30s)")]
    InvalidDuration { value: String, reason: String },
    #[error("must be greater than zero, got {value:?}")]
    ZeroDuration { value: String },
    #[error("invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex { pattern: String, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("duplicate {what} {value:?}")]
    Duplicate { what: &'static str, value: String },
    #[error("{0}")]
    Conflict(String),
    #[error("LaneGroup {group:?} does not exist in this namespace")]
    UnknownGroup { group: String },
    #[error(
        "LaneGroup {group:?} is invalid (see its Accepted condition), so its lanes are not served"
    )]
    RefusedGroup { group: String },
    #[error("lane weights of group {group:?} would sum to {sum}, more than 100")]
    WeightSumExceeded { group: String, sum: u32 },
}

/// One refused field: `spec.rules[0].qps.threshold: must be >= 0, got -1`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {violation}")]
pub struct FieldError {
    pub field: String,
    pub violation: Violation,
}

/// Which object an error is about, so the control plane can put it in that
/// object's `Accepted` condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object that cannot be served, with every reason found (not just the
/// first), so one `kubectl describe` shows everything to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{object} is invalid: {}", join(.errors))]
pub struct Invalid {
    pub object: ObjectRef,
    pub errors: Vec<FieldError>,
}

impl Invalid {
    /// The errors alone, for a status condition's message.
    pub fn message(&self) -> String {
        join(&self.errors)
    }

    /// Whether some error is about exactly this field.
    pub fn names_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }
}

fn join(errors: &[FieldError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&e.to_string());
    }
    out
}

/// Collects the errors of one object while conversion carries on, so that a
/// single pass reports them all.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: &Field, violation: Violation) {
        self.0.push(FieldError {
            field: field.0.clone(),
            violation,
        });
    }

    /// `Ok(value)` when nothing was refused.
    pub(crate) fn finish<T>(self, object: ObjectRef, value: T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Invalid {
                object,
                errors: self.0,
            })
        }
    }
}

/// A field path under construction: `spec`, `spec.rules[0]`, ...
#[derive(Debug, Clone)]
pub(crate) struct Field(String);

impl Field {
    pub(crate) fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        Self(format!("{}.{key}", self.0))
    }

    pub(crate) fn at(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }
}
