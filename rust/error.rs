//! The one error type of the core. Every variant is mapped to a specific Python exception in
//! `py/errors.rs`; library code never uses `anyhow`, so the variant is still known at the boundary.

use std::fmt;

/// Everything that can go wrong in the core.
#[derive(Debug)]
pub enum CoreError {
    /// A file that should exist does not.
    NotFound {
        /// The path that was looked up.
        path: String,
    },
    /// Reading or mapping a file failed.
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model file is malformed: bad header, bad offsets, wrong dtype, shape mismatch, ...
    Format {
        /// The file.
        path: String,
        /// What is wrong and, where possible, what to do.
        msg: String,
    },
    /// A tensor the caller asked for is not in the file.
    MissingTensor {
        /// The file.
        path: String,
        /// The missing tensor's name.
        name: String,
        /// The tensors the file does have (truncated list).
        available: String,
    },
    /// The tokenizer JSON could not be built or could not encode a text.
    Tokenizer {
        /// What went wrong.
        msg: String,
    },
    /// A token id (or a mapped row index) is not below the table's row count.
    IdOutOfRange {
        /// The id.
        id: u64,
        /// The number of valid ids.
        limit: u64,
        /// Which table the id indexes.
        what: &'static str,
    },
    /// An argument is invalid (shape, length, range).
    InvalidArgument {
        /// The argument name.
        arg: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The caller stopped the kernel through its [`crate::cancel::Cancel`] flag (e.g. Ctrl-C).
    Interrupted,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::NotFound { path } => write!(f, "{path}: no such file"),
            CoreError::Io { path, source } => write!(f, "{path}: {source}"),
            CoreError::Format { path, msg } => write!(f, "{path}: {msg}"),
            CoreError::MissingTensor { path, name, available } => {
                write!(f, "{path}: no tensor named {name:?} (the file has: {available})")
            }
            CoreError::Tokenizer { msg } => write!(f, "tokenizer: {msg}"),
            CoreError::IdOutOfRange { id, limit, what } => write!(
                f,
                "token id {id} is out of range for the {what} ({limit} rows): the tokenizer does not match this table"
            ),
            CoreError::InvalidArgument { arg, msg } => write!(f, "{arg}: {msg}"),
            CoreError::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for CoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl CoreError {
    /// Shorthand for a [`CoreError::Format`].
    pub fn format(path: impl Into<String>, msg: impl Into<String>) -> Self {
        CoreError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An I/O error on `path`: [`CoreError::NotFound`] when the file does not exist, else
    /// [`CoreError::Io`]. The one translation of OS errors on model files.
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => CoreError::NotFound { path },
            _ => CoreError::Io { path, source },
        }
    }

    /// Finds the item named `name` among a file's tensors; the error names the file and lists (up to
    /// 20 of) the names it has. The one tensor lookup of the safetensors and GGUF readers.
    pub(crate) fn find_tensor<'a, T>(path: &str, items: &'a [T], name: &str, name_of: fn(&T) -> &str) -> Result<&'a T> {
        items.iter().find(|t| name_of(t) == name).ok_or_else(|| {
            let mut names: Vec<&str> = items.iter().map(name_of).take(20).collect();
            if items.len() > 20 {
                names.push("...");
            }
            CoreError::MissingTensor {
                path: path.to_string(),
                name: name.to_string(),
                available: names.join(", "),
            }
        })
    }

    /// Shorthand for a [`CoreError::InvalidArgument`].
    pub fn arg(arg: &'static str, msg: impl Into<String>) -> Self {
        CoreError::InvalidArgument { arg, msg: msg.into() }
    }

    /// Renames the argument of an [`CoreError::InvalidArgument`] by the `(core name, caller's
    /// name)` pairs, so that a binding reports the names its users pass (`e` -> `embeddings`).
    pub fn with_arg_names(self, names: &[(&'static str, &'static str)]) -> Self {
        match self {
            CoreError::InvalidArgument { arg, msg } => {
                let arg = names.iter().find(|(from, _)| *from == arg).map_or(arg, |(_, to)| *to);
                CoreError::InvalidArgument { arg, msg }
            }
            other => other,
        }
    }
}

/// The core's result type.
pub type Result<T> = std::result::Result<T, CoreError>;
