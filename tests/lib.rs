//! sotto's cross-crate tests live in `tests/`: known-answer vectors
//! (`tests/vectors.rs`, data in the repository's `testdata/`) and, later,
//! end-to-end scenarios against a real relay.
#![forbid(unsafe_code)]
