//! Python exceptions: one package exception (`tokvec.FormatError`, a `ValueError`) for bad model
//! files, and a specific built-in exception for every other `CoreError` variant.

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyIndexError, PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::PyErr;

use crate::error::CoreError;

create_exception!(
    tokvec._core,
    FormatError,
    PyValueError,
    "A model file or folder is malformed or not in a format tokvec reads. The message names the file and the problem."
);

create_exception!(
    tokvec._core,
    TokenizerError,
    PyValueError,
    "The tokenizer JSON could not be loaded, does not match the table, or could not encode a text."
);

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        let msg = e.to_string();
        match e {
            CoreError::NotFound { .. } => PyFileNotFoundError::new_err(msg),
            CoreError::Io { .. } => PyOSError::new_err(msg),
            CoreError::Format { .. } | CoreError::MissingTensor { .. } => FormatError::new_err(msg),
            CoreError::Tokenizer { .. } => TokenizerError::new_err(msg),
            CoreError::IdOutOfRange { .. } => PyIndexError::new_err(msg),
            CoreError::InvalidArgument { .. } => PyValueError::new_err(msg),
            // Only a kernel whose flag was set returns this, and `interrupt::run` returns the
            // exception the signal handler raised instead; this is the fallback.
            CoreError::Interrupted => PyKeyboardInterrupt::new_err(msg),
        }
    }
}
