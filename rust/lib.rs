//! tokvec core: static text embeddings from the token-embedding table of a language model.
//!
//! The hot path lives here, with no Python types: memory-mapped safetensors (`header`), row gather
//! with f16/bf16/f32 → f32 conversion (`gather`), tokenization + weighted mean pooling in one
//! parallel pass (`pool`), and similarity search: one canonical dot product (`dot`), an int8
//! pre-score with a proven error bound (`int8`), exact top-k (`topk`), all pairs above a threshold
//! and greedy deduplication (`dedup`), and Hamming search over packed sign bits (`hamming`). The
//! PyO3 binding sits in `py/`, compiled only with the `python` feature.
//!
//! Every module is private: kernels that are only sound under a condition (an ISA present, a
//! length checked) stay out of reach, and the binding is the library's one consumer. This crate's
//! own benchmarks, fuzz targets and Rust integration tests reach the core through the `internals`
//! module, compiled only with the `internals` feature.
#![deny(missing_docs)]
// Without the binding nothing outside the crate calls the core, so every item would count as dead and
// the lint would say nothing. With `python` on (the maturin build; CI runs clippy with `--features
// python` and with `--all-features`) dead code is reported, and items that only unit tests or
// `internals` use are `cfg`-gated to those builds.
#![cfg_attr(not(feature = "python"), allow(dead_code))]

mod cancel;
mod cluster;
mod convert;
mod dedup;
mod dot;
mod dtype;
mod error;
mod fasttok;
mod gather;
mod gguf;
mod hamming;
mod header;
mod index;
mod int8;
mod ivf;
mod pool;
#[cfg(feature = "serve")]
mod serve;
mod simd;
#[cfg(test)]
mod testutil;
mod topk;

#[cfg(feature = "python")]
mod py;

/// Entry points for this crate's benchmarks (`benches/`), fuzz targets (`fuzz/`) and Rust
/// integration tests (`tests/`), compiled only with the `internals` feature.
///
/// Not a stable or supported API: it is whatever those programs need and changes with them. It
/// re-exports safe functions only, each of which checks its input and clamps any [`simd::Isa`] it
/// is given to what the CPU runs, so nothing here can break an invariant of the core. Add an item
/// only when a bench, fuzz target or integration test uses it.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::cancel::Cancel;
    pub use crate::error::CoreError;
    pub use crate::header::SafetensorsFile;

    /// Greedy deduplication and all pairs above a threshold, with their scalar references.
    pub mod dedup {
        pub use crate::dedup::{
            dedup_greedy_cancellable, dedup_greedy_scalar, pairs_above_cancellable, pairs_above_scalar, Dedup, Pair,
        };
    }

    /// Fast tokenizers, with the `tokenizers` crate's tokenizer they are measured against.
    pub mod fasttok {
        pub use crate::fasttok::{Kind, Tokenizer};
    }

    /// The row-accumulate kernel of pooling, and the ISA levels this process can run it with.
    pub mod gather {
        pub use crate::gather::{accumulate, available_isas, RowType};
    }

    /// The GGUF header parser.
    pub mod gguf {
        pub use crate::gguf::{parse, MetaArray, Value};
    }

    /// Hamming top-k, pairs and deduplication over packed sign bits, with their scalar references.
    pub mod hamming {
        pub use crate::hamming::{
            dedup_greedy_cancellable, dedup_greedy_scalar, pairs_above_cancellable, pairs_above_scalar,
            topk_cancellable, topk_scalar,
        };
    }

    /// The safetensors header validator.
    pub mod header {
        pub use crate::header::validate;
    }

    /// Tokenization and pooling.
    pub mod pool {
        pub use crate::pool::{EmbedModel, Encoder, HfEncoder, ModelSpec};
    }

    /// ISA levels (any level given to the core is clamped to what the CPU runs).
    pub mod simd {
        pub use crate::simd::Isa;
    }

    /// Exact float top-k, with its scalar reference.
    pub mod topk {
        pub use crate::topk::{topk, topk_scalar};
    }
}
