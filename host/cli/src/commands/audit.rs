//! `cbs audit`: who deployed, rolled back or undeployed what, and when; and
//! [`record`], which the commands that change the desired state call.

use std::process::ExitCode;

use cbs_host::audit::proof::{self, Check};
use cbs_host::audit::{self, Action, Audit, Event, Filter, Stored};
use cbs_host::bundle::{PublicKey, Trust};
use cbs_host::manifest::check_cell_id;
use cbs_host::unix_time::now_ms;
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

/// What one change to record is about.
pub struct Change<'a> {
    pub action: Action,
    pub cell: &'a str,
    pub version: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub key: Option<&'a str>,
    /// `key`'s signature over what it signed (see `audit::proof`).
    pub proof: Option<&'a str>,
    /// A rollback's digest left.
    pub from: Option<&'a str>,
    pub detail: String,
}

/// Appends `change` to the audit trail as the connection `client` made with
/// `nats`. A change that happened but could not be audited is reported on
/// stderr, not undone.
pub async fn record(nats: &NatsArgs, client: &async_nats::Client, change: Change<'_>) {
    let options = nats.options("");
    let user = options
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), |o| o.identity());
    let mut event = Event {
        at_ms: now_ms(),
        action: change.action,
        cell: change.cell.to_owned(),
        version: change.version.map(str::to_owned),
        digest: change.digest.map(str::to_owned),
        user,
        client: audit::client_of(client),
        key: change.key.map(str::to_owned),
        detail: Some(change.detail).filter(|d| !d.is_empty()),
        from: change.from.map(str::to_owned),
        proof: change.proof.map(str::to_owned),
        writer: None,
    };
    if let Some(seed) = options.and_then(|o| o.user_seed()) {
        if let Err(e) = proof::sign_as_writer(&mut event, &seed) {
            eprintln!("warning: the audit event is not signed: {e:#}");
        }
    }
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
