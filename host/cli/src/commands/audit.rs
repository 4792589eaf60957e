//! `cbs audit`: who deployed, rolled back or undeployed what, and when.

use std::process::ExitCode;

use cbs_host::audit::proof::{self, Check};
use cbs_host::audit::{Action, Audit, Filter, Stored};
use cbs_host::bundle::{PublicKey, Trust};
use cbs_host::manifest::check_cell_id;
use clap::Args;

use crate::args::{names_of, NatsArgs};
use crate::table::{print_listing, Table};

/// The audit trail: every deploy, rollback and undeploy, and the trust list
/// of every host that follows the desired state — oldest first.
///
/// Events live in the JetStream stream CBS_AUDIT (kept a year). `AT` is
/// when the server stored the event, `USER` the NATS identity of whoever
/// acted, `CLIENT` its connection, `KEY` the key that signed what was
/// deployed. `CHECK` says what of it is proven: `verified` (signed by the
/// writer's NATS nkey, and by the release key where one is named),
/// `claimed` (a password or token user: its user and client are only what
/// it says) or `bad` (a forged or changed event: the reasons follow the
/// table, and the exit status is 1).
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
    /// Also require every release key named to be this key (a .pub file or
    /// its hex); repeatable.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    if let Some(cell) = &args.cell {
        check_cell_id(cell)?;
    }
    let bus = args.nats.connect_client().await?;
    let audit = Audit::open(bus.client()).await?;
    let trust = Trust::new(
        args.trust
            .iter()
            .map(|k| PublicKey::parse_arg(k))
            .collect::<anyhow::Result<_>>()?,
    );
    let events = audit
        .list(&Filter {
            action: args.action,
            cell: args.cell.clone(),
        })
        .await?;
    let checks: Vec<Check> = events
        .iter()
        .map(|s| proof::check(&s.event, s.stored_ms, &trust))
        .collect();
    let checked: Vec<(&Stored, &Check)> = events.iter().zip(&checks).collect();
    print_listing(
        args.json,
        &checked,
        |&(s, c)| json(s, c),
        "no audit events",
        |_| table(&events, &checks),
    )?;
    let bad = checks.iter().filter(|c| c.is_bad()).count();
    if bad > 0 {
        eprintln!("{bad} audit event(s) do not verify: forged or changed after they were written");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// An event as `--json` lists it: its fields, when the server stored it,
/// and its check.
fn json(stored: &Stored, check: &Check) -> serde_json::Value {
    let mut value = serde_json::to_value(&stored.event).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("stored_at_ms".into(), stored.stored_ms.into());
        map.insert("check".into(), check.name().into());
        map.insert("problems".into(), check.problems().into());
    }
    value
}

fn table(events: &[Stored], checks: &[Check]) -> String {
    let mut table = Table::new([
        "AT", "ACTION", "CELL", "VERSION", "USER", "CLIENT", "KEY", "CHECK", "DETAIL",
    ]);
    let mut notes = String::new();
    for (n, (stored, check)) in events.iter().zip(checks).enumerate() {
        let e = &stored.event;
        let key = e
            .key
            .as_deref()
            .map_or("-".to_owned(), |k| k.chars().take(12).collect());
        let at = utc(stored.stored_ms);
        table.row([
            at.as_str(),
            &e.action.to_string(),
            e.cell.as_str(),
            e.version.as_deref().unwrap_or("-"),
            e.user.as_str(),
            e.client.as_str(),
            key.as_str(),
            check.name(),
            e.detail.as_deref().unwrap_or(""),
        ]);
        for problem in check.problems() {
            notes.push_str(&format!(
                "event {} ({} {} at {at}): {problem}\n",
                n + 1,
                e.action,
                e.cell
            ));
        }
    }
    format!("{table}{notes}")
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
