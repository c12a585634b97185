//! The Prometheus text exposition the pilot reads from sidecars (`exposition::samples`).
//!
//! Input: a `/metrics` body. Invariants: reading never panics; a sample has a valid name and at
//! most `MAX_LABELS` labels; a sample written back in the text format reads as the same sample.

use lanemesh_api::exposition::{MAX_LABELS, samples};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for sample in samples(&text).flatten() {
        assert!(!sample.name.is_empty());
        assert!(sample.labels.len() <= MAX_LABELS);
        let mut line = sample.name.to_owned();
        if !sample.labels.is_empty() {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            line.push_str(&format!("{{{}}}", labels.join(",")));
        }
        let value = match sample.value {
            v if v == f64::INFINITY => "+Inf".to_owned(),
            v if v == f64::NEG_INFINITY => "-Inf".to_owned(),
            v if v.is_nan() => "NaN".to_owned(),
            v => format!("{v:?}"),
        };
        line.push(' ');
        line.push_str(&value);
        let again: Vec<_> = samples(&line).collect();
        assert_eq!(again.len(), 1, "{line:?}");
        let again = again[0]
            .as_ref()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(again.name, sample.name, "{line:?}");
        assert_eq!(again.labels, sample.labels, "{line:?}");
        assert!(
            again.value == sample.value || (again.value.is_nan() && sample.value.is_nan()),
            "{line:?}"
        );
    }
}
