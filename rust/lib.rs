//! tokvec core: static text embeddings from the token-embedding table of a language model.
//!
//! The hot path lives here, with no Python types: memory-mapped safetensors (`header`), row gather
//! with f16/bf16/f32 → f32 conversion (`gather`), tokenization + weighted mean pooling in one
//! parallel pass (`pool`), and similarity search: one canonical dot product (`dot`), an int8
//! pre-score with a proven error bound (`int8`), exact top-k (`topk`), all pairs above a threshold
//! and greedy deduplication (`dedup`), and Hamming search over packed sign bits (`hamming`). The
//! PyO3 binding sits in `py/`, compiled only with the `python` feature.
#![deny(missing_docs)]

pub mod cancel;
pub mod cluster;
pub mod convert;
pub mod dedup;
pub mod dot;
pub mod dtype;
pub mod error;
pub mod fasttok;
pub mod gather;
pub mod gguf;
pub mod hamming;
pub mod header;
pub mod int8;
mod ivf;
pub mod pool;
pub mod simd;
#[cfg(test)]
mod testutil;
pub mod topk;

#[cfg(feature = "python")]
mod py;

pub use cancel::Cancel;
pub use dtype::ElemType;
pub use error::{CoreError, Result};
pub use header::{SafetensorsFile, TensorMeta};
