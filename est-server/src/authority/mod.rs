//! The authority: who may get which certificate.
//!
//! [`enroll`] is the one enrollment path: credentials become a principal in
//! [`auth`] (Basic users with [`password`] checks in turns per address,
//! device tokens, bootstrap and issued certificates; [`keyed_locks`] judge
//! doubtful credentials one at a time per address and device), then
//! the request is checked and recorded as below. [`retirement`] retires
//! superseded certificates in their CA.
//!
//! [`subject`] rebuilds and checks names, [`lineage`] decides which live
//! certificate a new one replaces, [`entitlement`] what each kind of
//! credential may obtain, and [`revocation`] what the CRLs and OCSP say;
//! [`operation`] names the EST operations. `crate::authority::enroll` runs them in order on every
//! request; none of them knows HTTP.

pub mod auth;
pub mod enroll;
pub mod entitlement;
pub mod keyed_locks;
pub mod lineage;
pub mod operation;
pub mod password;
pub mod retirement;
pub mod revocation;
pub mod subject;
