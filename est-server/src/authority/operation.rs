//! The EST operations (RFC 7030 §3.2.2) the authority decides on.

/// One EST operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET cacerts`
    CaCerts,
    /// `POST simpleenroll`
    SimpleEnroll,
    /// `POST simplereenroll`
    SimpleReenroll,
    /// `GET csrattrs`
    CsrAttrs,
    /// `POST serverkeygen`
    ServerKeyGen,
}

impl Operation {
    /// The operation's path segment.
    pub fn name(self) -> &'static str {
        match self {
            Self::CaCerts => "cacerts",
            Self::SimpleEnroll => "simpleenroll",
            Self::SimpleReenroll => "simplereenroll",
            Self::CsrAttrs => "csrattrs",
            Self::ServerKeyGen => "serverkeygen",
        }
    }

    /// The HTTP method the operation uses.
    pub fn method(self) -> &'static str {
        match self {
            Self::CaCerts | Self::CsrAttrs => "GET",
            _ => "POST",
        }
    }
}
