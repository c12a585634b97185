//! One module per fuzz target; each `run` takes the fuzzer's bytes.

pub mod baggage;
pub mod detect;
pub mod discovery;
pub mod exposition;
pub mod h1_chunked;
pub mod h1_request;
pub mod h1_response;
pub mod manifest;
pub mod path_normalize;

/// A split point in `0..=len` chosen by `selector`, so one input byte lets the fuzzer try
/// every way of cutting the rest in two.
pub(crate) fn split_point(selector: u8, len: usize) -> usize {
    len * usize::from(selector) / usize::from(u8::MAX)
}
