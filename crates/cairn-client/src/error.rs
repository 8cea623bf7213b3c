//! Client errors.

use cairn_proto::v1::ErrorInfo;
use cairn_types::ErrorCode;
use prost::Message;
use std::fmt;
use std::time::Duration;

/// Result alias using [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a Cairn call failed with: the server's stable code and its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// Stable code (`TABLE_NOT_FOUND`, `UNAVAILABLE`, …).
    pub code: ErrorCode,
    /// What was wrong and what to try.
    pub message: String,
    transport: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl Error {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transport: false,
        }
    }

    pub(crate) fn from_status(s: &tonic::Status, addr: &str) -> Self {
        if let Ok(info) = ErrorInfo::decode(s.details())
            && let Some(code) = ErrorCode::parse(&info.code)
        {
            return Self::new(code, info.message);
        }
        if s.code() == tonic::Code::OutOfRange {
            // gRPC's own refusal of a message over the node's size limit: retrying as is
            // cannot succeed.
            return Self::new(
                ErrorCode::TooLarge,
                format!(
                    "node {addr}: {}; send smaller values, or fewer operations per batch",
                    s.message()
                ),
            );
        }
        // No Cairn details: the node could not be reached or the call broke in transit.
        let message = format!("node {addr}: {} ({:?})", s.message(), s.code());
        Self {
            code: ErrorCode::Unavailable,
            message,
            transport: true,
        }
    }

    /// Whether retrying (on another node, later) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, ErrorCode::Unavailable)
    }

    pub(crate) fn is_transport(&self) -> bool {
        self.transport
    }

    pub(crate) fn timed_out(self, after: Duration) -> Self {
        let message = format!(
            "gave up after {after:?}: {}; check that the nodes are running (`cairn admin nodes`) and reachable",
            self.message
        );
        Self { message, ..self }
    }
}
