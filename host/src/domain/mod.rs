//! Domains (ADR 0027): a group of cells with one owner and one boundary,
//! declared in one spec ([`spec`]), planned against the lattice
//! ([`plan`]), applied, rolled back as a unit and exported ([`apply`]),
//! and kept in the lattice's bucket `cbs-domains` ([`state`]); hosts keep
//! calls within the domains' boundaries ([`crate::boundary`]), and on NATS
//! the server does too, each domain its own account ([`accounts`]).

pub mod accounts;
pub mod apply;
pub mod plan;
pub mod spec;
pub mod state;
