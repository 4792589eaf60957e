//! `cbs compliance`: the running lattice checked against its policy and
//! against CBS's own practice — signed, current, contracted and limited
//! releases; hosts that agree on trust and policy and talk TLS; an audit
//! trail that cannot be edited and is kept; no forgotten dead letters.
//! Each check passes or fails with what it found; any failure fails the
//! report, so it can gate a pipeline.
//!
//! The facts are read once ([`facts::Facts`]); each check is a function of
//! them ([`checks`]); the report prints as text, JSON or HTML ([`html`]).

pub mod checks;
pub mod facts;
pub mod html;

use serde::Serialize;

use crate::bundle::Trust;

/// What the report holds the lattice to.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keys the policy and bundles must be signed by (empty: any signer,
    /// as long as the signature is valid).
    pub trust: Trust,
    /// A release deployed longer ago than this is stale.
    pub stale_days: u64,
    /// Dead letters older than this are a violation.
    pub dead_letter_days: u64,
    /// The audit trail must be kept at least this long.
    pub audit_days: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust: Trust::default(),
            stale_days: 90,
            dead_letter_days: 7,
            audit_days: 365,
        }
    }
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable name, for pipelines (`releases.signed`).
    pub id: &'static str,
    pub title: &'static str,
    pub passed: bool,
    /// What breaks it, one line each (empty when it passed), or what it
    /// looked at.
    pub findings: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was made, ms since the Unix epoch.
    pub at_ms: u64,
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// Reads the lattice over `client` and checks it.
pub async fn report(client: &async_nats::Client, options: &Options) -> anyhow::Result<Report> {
    let facts = facts::Facts::read(client).await?;
    let checks = checks::all(&facts, options);
    Ok(Report {
        at_ms: crate::unix_time::now_ms(),
        passed: checks.iter().all(|c| c.passed),
        checks,
    })
}
