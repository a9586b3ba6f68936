//! The authority: who may get which certificate.
//!
//! [`subject`] rebuilds and checks names, [`lineage`] decides which live
//! certificate a new one replaces, and [`entitlement`] what each kind of
//! credential may obtain. `crate::enroll` runs them in order on every
//! request; none of them knows HTTP.

pub mod entitlement;
pub mod lineage;
pub mod subject;
