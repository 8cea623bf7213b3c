//! Storage errors.

/// Result alias using [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure of the storage engine. Every variant means the node cannot trust its disk for
/// the operation; callers surface it and never treat it as "key absent".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine reported an I/O or internal failure.
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored bytes failed to decode: corruption or a version mismatch.
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt {
        /// Hex of the key whose value failed to decode.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

impl From<Error> for cairn_types::Error {
    fn from(e: Error) -> Self {
        cairn_types::Error::Internal(e.to_string())
    }
}
