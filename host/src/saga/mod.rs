//! Sagas (ADR 0028): a domain's ordered steps, each a call with a
//! compensating call, run durably ([`def`], [`journal`], [`run`],
//! [`worker`]).

pub mod def;
pub mod journal;
pub mod run;
pub mod worker;
