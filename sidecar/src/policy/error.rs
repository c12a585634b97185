//! Invalid policy parameters.
//!
//! The messages name the CRD field (camelCase, as the operator wrote it) so that a status
//! condition or a NACK built from them points straight at the offending line of YAML.

/// A policy parameter the constructors refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rate or count that is NaN, infinite or negative.
    #[error("{field} must be a finite number >= 0, got {value}")]
    InvalidThreshold {
        /// CRD field name.
        field: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A ratio outside (0, 1].
    #[error("{field} must be a ratio in (0, 1], got {value}")]
    InvalidRatio {
        /// CRD field name.
        field: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A duration that must be positive but is zero.
    #[error("{field} must be a positive duration, got 0s")]
    ZeroDuration {
        /// CRD field name.
        field: &'static str,
    },
    /// An integer below its minimum.
    #[error("{field} must be at least {min}, got {value}")]
    TooSmall {
        /// CRD field name.
        field: &'static str,
        /// Smallest accepted value.
        min: u64,
        /// The refused value.
        value: u64,
    },
    /// An integer above its maximum.
    #[error("{field} must be at most {max}, got {value}")]
    TooLarge {
        /// CRD field name.
        field: &'static str,
        /// Largest accepted value.
        max: u64,
        /// The refused value.
        value: u64,
    },
}

/// Accepts finite, non-negative numbers.
pub(crate) fn check_threshold(field: &'static str, value: f64) -> Result<f64, PolicyError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(PolicyError::InvalidThreshold { field, value })
    }
}

/// Accepts ratios in (0, 1].
pub(crate) fn check_ratio(field: &'static str, value: f64) -> Result<f64, PolicyError> {
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(PolicyError::InvalidRatio { field, value })
    }
}

/// Accepts non-zero durations.
pub(crate) fn check_positive(
    field: &'static str,
    value: std::time::Duration,
) -> Result<std::time::Duration, PolicyError> {
    if value.is_zero() {
        Err(PolicyError::ZeroDuration { field })
    } else {
        Ok(value)
    }
}

/// Accepts integers of at least `min`.
pub(crate) fn check_min(field: &'static str, value: u64, min: u64) -> Result<u64, PolicyError> {
    if value >= min {
        Ok(value)
    } else {
        Err(PolicyError::TooSmall { field, min, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_name_the_field_and_value() {
        assert_eq!(
            check_threshold("threshold", f64::NAN)
                .unwrap_err()
                .to_string(),
            "threshold must be a finite number >= 0, got NaN"
        );
        assert_eq!(
            check_ratio("threshold", 1.5).unwrap_err().to_string(),
            "threshold must be a ratio in (0, 1], got 1.5"
        );
        assert_eq!(
            check_positive("window", Duration::ZERO)
                .unwrap_err()
                .to_string(),
            "window must be a positive duration, got 0s"
        );
        assert_eq!(
            check_min("halfOpenProbes", 0, 1).unwrap_err().to_string(),
            "halfOpenProbes must be at least 1, got 0"
        );
    }

    #[test]
    fn validators_accept_boundaries() {
        assert_eq!(check_threshold("threshold", 0.0), Ok(0.0));
        assert!(check_threshold("threshold", -0.5).is_err());
        assert!(check_threshold("threshold", f64::INFINITY).is_err());
        assert_eq!(check_ratio("threshold", 1.0), Ok(1.0));
        assert!(check_ratio("threshold", 0.0).is_err());
        assert!(check_ratio("threshold", f64::NAN).is_err());
        assert_eq!(check_min("halfOpenProbes", 1, 1), Ok(1));
        assert!(check_positive("window", Duration::from_nanos(1)).is_ok());
    }
}
