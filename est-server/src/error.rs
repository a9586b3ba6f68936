//! The outcome of a refused EST request, independent of HTTP.
//!
//! Each variant is one answer a client can act on; [`crate::frontend::http`] turns it
//! into a status code, headers and a plain-text body. Internal faults carry
//! their detail for the log only: the client sees a request id.

use ca_backends::CaError;

/// Why a request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EstError {
    /// Malformed input or a policy violation in the request (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials (401, with a Basic challenge).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such path or label (404).
    #[error("{0}")]
    NotFound(String),
    /// Too many failed attempts (429 + Retry-After).
    #[error("{message}")]
    TooManyRequests {
        /// Seconds until attempts are accepted again.
        retry_after_secs: u64,
        /// What was limited.
        message: String,
    },
    /// Body too slow (408).
    #[error("{0}")]
    Timeout(String),
    /// Body too large (413).
    #[error("{0}")]
    TooLarge(String),
    /// Wrong `Content-Type` (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Accepted, awaiting approval (202 + Retry-After).
    #[error("{message}")]
    Pending {
        /// Seconds the client should wait before asking again.
        retry_after_secs: u64,
        /// What the client is waiting for.
        message: String,
    },
    /// A temporary conflict with a concurrent request (409 + Retry-After):
    /// the same request can succeed once the other one is done.
    #[error("{message}")]
    Conflict {
        /// Seconds the client should wait before trying again.
        retry_after_secs: u64,
        /// What the request ran into.
        message: String,
    },
    /// The operation exists but is not offered here (501).
    #[error("{0}")]
    NotImplemented(String),
    /// The CA backend is unreachable (503); detail is logged, not sent.
    #[error("CA backend unavailable: {0}")]
    Unavailable(String),
    /// An internal fault (500); detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EstError {
    /// Wraps any displayable internal fault.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// Whether the detail must stay out of the response body.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Self::Internal(_) | Self::Unavailable(_))
    }
}

impl From<CaError> for EstError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::Rejected(reason) => Self::BadRequest(reason),
            CaError::Pending { retry_after_secs } => Self::Pending {
                retry_after_secs: retry_after_secs.into(),
                message: "the CA has not decided on this request yet".into(),
            },
            CaError::Unavailable(detail) => Self::Unavailable(detail),
            CaError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<crate::registry::RegistryError> for EstError {
    /// An unreachable registry is a 503 (retry later), anything else a 500.
    fn from(e: crate::registry::RegistryError) -> Self {
        match e {
            crate::registry::RegistryError::Unavailable(detail) => Self::Unavailable(detail),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<est_wire::csr::CsrError> for EstError {
    fn from(e: est_wire::csr::CsrError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<est_wire::body::BodyError> for EstError {
    fn from(e: est_wire::body::BodyError) -> Self {
        Self::BadRequest(e.to_string())
    }
}
