//! `cbs audit`: who deployed, rolled back or undeployed what, and when; and
//! [`record`], which the commands that change the desired state call.

use std::process::ExitCode;

use cbs_host::audit::{self, Action, Audit, Event, Filter};
use cbs_host::deploy::now_ms;
use cbs_host::manifest::check_cell_id;
use clap::Args;

use crate::args::{names_of, NatsArgs};
use crate::table::Table;

/// The audit trail: every deploy, rollback and undeploy, and the trust list
/// of every host that follows the desired state — oldest first.
///
/// Events live in the JetStream stream CBS_AUDIT (kept a year). `USER` is
/// the NATS identity of whoever acted, `CLIENT` the connection as the
/// server saw it, `KEY` the key that signed what was deployed.
#[derive(Args)]
pub struct AuditArgs {
    /// Only events of this cell.
    #[arg(long, value_name = "CELL_ID")]
    cell: Option<String>,
    /// Only events of this kind.
    #[arg(long, value_parser = names_of::<Action>())]
    action: Option<Action>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    if let Some(cell) = &args.cell {
        check_cell_id(cell)?;
    }
    let bus = args.nats.connect_client().await?;
    let audit = Audit::open(bus.client()).await?;
    let events = audit
        .list(&Filter {
            action: args.action,
            cell: args.cell.clone(),
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        println!("no audit events");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new([
        "AT", "ACTION", "CELL", "VERSION", "USER", "CLIENT", "KEY", "DETAIL",
    ]);
    for e in &events {
        let key = e
            .key
            .as_deref()
            .map_or("-".to_owned(), |k| k.chars().take(12).collect());
        table.row([
            utc(e.at_ms).as_str(),
            &e.action.to_string(),
            e.cell.as_str(),
            e.version.as_deref().unwrap_or("-"),
            e.user.as_str(),
            e.client.as_str(),
            key.as_str(),
            e.detail.as_deref().unwrap_or(""),
        ]);
    }
    print!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// What one change to record is about.
pub struct Change<'a> {
    pub action: Action,
    pub cell: &'a str,
    pub version: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub key: Option<&'a str>,
    pub detail: String,
}

/// Appends `change` to the audit trail as the connection `client` made with
/// `nats`. A change that happened but could not be audited is reported on
/// stderr, not undone.
pub async fn record(nats: &NatsArgs, client: &async_nats::Client, change: Change<'_>) {
    let user = nats
        .options("")
        .map_or_else(|| "anonymous".to_owned(), |o| o.identity());
    let event = Event {
        at_ms: now_ms(),
        action: change.action,
        cell: change.cell.to_owned(),
        version: change.version.map(str::to_owned),
        digest: change.digest.map(str::to_owned),
        user,
        client: audit::client_of(client),
        key: change.key.map(str::to_owned),
        detail: Some(change.detail).filter(|d| !d.is_empty()),
    };
    let outcome = match Audit::open(client).await {
        Ok(audit) => audit.record(&event).await,
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        eprintln!(
            "warning: the {} of {} is not in the audit trail: {e:#}",
            change.action, change.cell
        );
    }
}

/// RFC 3339 UTC, to the second, of a Unix time in ms.
fn utc(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_unix_milliseconds() {
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
