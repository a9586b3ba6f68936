//! Protocol front-ends. They parse, limit and encode; every decision about
//! who may get which certificate is the authority's (`crate::authority`).
//!
//! [`http`] serves EST over HTTPS (with [`router`], [`header_case`] for the
//! byte-exact header names libest needs, [`tls`] and [`listener`]'s limits
//! against hostile clients), [`cvm`] the vending-machine JSON façades and
//! [`status`] the OCSP responder and CRLs (on the EST port and, optionally,
//! a plain-HTTP listener of their own).

pub mod cvm;
pub mod header_case;
pub mod http;
pub mod listener;
pub mod router;
pub mod status;
pub mod tls;
