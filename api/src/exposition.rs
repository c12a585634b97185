//! Reading the Prometheus text exposition format the proxies serve on `/metrics`, for the
//! pilot's traffic view (it scrapes the sidecars of the pods it serves).
//!
//! Hand-written rather than a crate: the pilot reads only the plain sample lines of a few
//! families from pods it does not trust, so the parser borrows from the input, never panics,
//! bounds the labels of a sample ([`MAX_LABELS`]) and is fuzzed (`fuzz/` target `exposition`).
//! The caller bounds the body's size.

use std::borrow::Cow;

/// Labels of one sample at most; a line with more is refused.
pub const MAX_LABELS: usize = 32;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, `""` when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v)
    }
}

/// A line that is not a sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ExpositionError {
    /// 1-based.
    pub line: usize,
    pub what: &'static str,
}

/// The samples of `text`, comments and blank lines skipped; each line that is not a valid
/// sample is an error in its place (the others are still read).
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample<'_>, ExpositionError>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        Some(sample(line).map_err(|what| ExpositionError { line: i + 1, what }))
    })
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn name(input: &str) -> Result<(&str, &str), &'static str> {
    let end = input
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(input.len(), |(i, _)| i);
    if end == 0 {
        return Err("expected a name");
    }
    Ok(input.split_at(end))
}

fn sample(line: &str) -> Result<Sample<'_>, &'static str> {
    let (metric, mut rest) = name(line)?;
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after.trim_start();
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            if labels.len() == MAX_LABELS {
                return Err("too many labels");
            }
            let (label, after) = name(rest)?;
            let after = after
                .trim_start()
                .strip_prefix('=')
                .ok_or("expected = after a label name")?
                .trim_start()
                .strip_prefix('"')
                .ok_or("expected a quoted label value")?;
            let (value, after) = quoted(after)?;
            labels.push((label, value));
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after.trim_start();
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label");
            }
        }
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("expected a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|_| "the value is not a number")?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| "the timestamp is not an integer")?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the value");
    }
    Ok(Sample {
        name: metric,
        labels,
        value,
    })
}

/// A label value up to its closing quote (`\\`, `\"` and `\n` escaped), and what follows.
fn quoted(input: &str) -> Result<(Cow<'_, str>, &str), &'static str> {
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let value = match owned {
                    Some(s) => Cow::Owned(s),
                    None => Cow::Borrowed(&input[..i]),
                };
                return Ok((value, &input[i + 1..]));
            }
            b'\\' => {
                let escaped = match bytes.get(i + 1) {
                    Some(b'\\') => '\\',
                    Some(b'"') => '"',
                    Some(b'n') => '\n',
                    _ => return Err("invalid escape in a label value"),
                };
                owned
                    .get_or_insert_with(|| input[..i].to_owned())
                    .push(escaped);
                i += 2;
            }
            _ => {
                // A whole UTF-8 character: `i` is always on a boundary here.
                let c = input[i..].chars().next().ok_or("invalid label value")?;
                if let Some(s) = owned.as_mut() {
                    s.push(c);
                }
                i += c.len_utf8();
            }
        }
    }
    Err("unterminated label value")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_what_prometheus_client_writes() {
        let text = "# HELP lanemesh_requests Requests proxied.\n\
                    # TYPE lanemesh_requests counter\n\
                    lanemesh_requests_total{direction=\"inbound\",app=\"b\",lane=\"gray\",status=\"2xx\"} 42\n\
                    lanemesh_open_connections 3\n\
                    lanemesh_request_duration_seconds_bucket{le=\"+Inf\"} 7 1700000000000\n\
                    \n# EOF\n";
        let samples: Vec<_> = samples(text).map(Result::unwrap).collect();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "lanemesh_requests_total");
        assert_eq!(samples[0].label("lane"), "gray");
        assert_eq!(samples[0].label("missing"), "");
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].labels, vec![]);
        assert_eq!(samples[2].value, 7.0);
    }

    #[test]
    fn escapes_in_label_values() {
        let s = sample(r#"m{rule="a \"b\" \\ c\nd",x="é"} 1"#).unwrap();
        assert_eq!(s.label("rule"), "a \"b\" \\ c\nd");
        assert_eq!(s.label("x"), "é");
        assert!(
            matches!(s.labels[1].1, Cow::Borrowed(_)),
            "no copy without escapes"
        );
    }

    #[test]
    fn broken_lines_are_errors_in_their_place() {
        for (line, what) in [
            ("{a=\"b\"} 1", "expected a name"),
            ("m{a=\"b} 1", "unterminated label value"),
            ("m{a=b} 1", "expected a quoted label value"),
            ("m{a=\"b\" c=\"d\"} 1", "expected , or } after a label"),
            ("m{a=\"\\x\"} 1", "invalid escape in a label value"),
            ("m one", "the value is not a number"),
            ("m", "expected a value"),
            ("m 1 2 3", "unexpected text after the value"),
        ] {
            assert_eq!(sample(line), Err(what), "{line}");
        }
        let many = format!(
            "m{{{}}} 1",
            (0..=MAX_LABELS)
                .map(|i| format!("l{i}=\"v\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(sample(&many), Err("too many labels"));
        let read: Vec<_> = samples("ok 1\nbroken\nok 2\n").collect();
        assert_eq!(read.len(), 3);
        assert_eq!(
            read[1],
            Err(ExpositionError {
                line: 2,
                what: "expected a value"
            })
        );
    }
}
