//! Protocol front-ends. They parse, limit and encode; every decision about
//! who may get which certificate is the authority's (`crate::authority`).
//!
//! [`http`] serves EST over HTTPS (with [`router`], [`header_case`] for the
//! byte-exact header names libest needs, [`tls`] and [`listener`]'s limits
//! against hostile clients), [`cvm`] the vending-machine JSON façades and
//! [`ocsp`] the OCSP responder on the same port.

pub mod cvm;
pub mod header_case;
pub mod http;
pub mod listener;
pub mod ocsp;
pub mod router;
pub mod tls;
