//! The NATS permissions of each CBS role (docs/security.md, "Roles and their
//! permissions"), as data: `cbs accounts` writes them into each domain's
//! account, and `tests/integration/roles.rs` runs them on a real server.
//! A host's set is cut to the cells it serves: their events, durable
//! streams and state buckets by name, never a wildcard over all of them.

use std::collections::BTreeSet;

use crate::manifest::Manifest;

/// One NATS user's permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: BTreeSet<String>,
    pub publish_deny: BTreeSet<String>,
    pub subscribe: BTreeSet<String>,
    /// May publish to the reply subject of a request it received.
    pub allow_responses: bool,
}

/// The JetStream API calls that only read, and the consumers reading
/// takes, which hosts and deployers both make.
const JS_READ: &[&str] = &[
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.INFO.>",
    "$JS.API.CONSUMER.MSG.NEXT.>",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.FC.>",
];

/// The lattice's buckets and streams, which `cbs` and hosts open (creating
/// what is missing).
const LATTICE_STREAMS: &[&str] = &[
    "KV_cbs-desired",
    "KV_cbs-status",
    "KV_cbs-hosts",
    "KV_cbs-placement",
    "KV_cbs-placer",
    "KV_cbs-served",
    "KV_cbs-policy",
    "OBJ_cbs-bundles",
    "CBS_AUDIT",
];

/// The buckets a host writes: its status, what it serves, its heartbeat,
/// and placement (a host may hold the placer's lease).
const HOST_BUCKETS: &[&str] = &[
    "cbs-status",
    "cbs-served",
    "cbs-hosts",
    "cbs-placement",
    "cbs-placer",
];

/// What serving one cell asks of NATS beyond its calls, read from its
/// manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellNeeds {
    pub id: String,
    /// Subjects its events go to (`publish` and `publish_durable` grants).
    pub publishes: Vec<String>,
    /// Subjects it subscribes to without a stream.
    pub subscribes: Vec<String>,
    /// Streams its host creates and updates (its durable stream, its
    /// durable subscriptions' streams, its state bucket).
    pub streams: Vec<String>,
    /// Subjects its host publishes to its durable stream.
    pub durable_subjects: Vec<String>,
    /// Its state bucket, if it keeps state.
    pub state_bucket: Option<String>,
    /// It takes messages from a stream (its own or a durable
    /// subscription's): acknowledgements and dead letters.
    pub consumes: bool,
}

impl CellNeeds {
    /// The needs of the cell `manifest` describes.
    pub fn of(manifest: &Manifest) -> Self {
        let id = &manifest.id;
        let caps = &manifest.capabilities;
        let mut needs = Self {
            id: id.clone(),
            publishes: caps
                .publish
                .iter()
                .chain(&caps.publish_durable)
                .cloned()
                .collect(),
            ..Self::default()
        };
        for subscription in &manifest.subscribe {
            if subscription.durable {
                needs.consumes = true;
                needs.streams.push(subscription.stream_name());
            } else {
                needs.subscribes.push(subscription.subject.clone());
            }
        }
        if let Some(durable) = &manifest.durable {
            needs.consumes = true;
            needs.streams.push(durable.stream_name(id));
            needs.durable_subjects = durable.subjects_of(id);
        }
        if caps.state.is_some() {
            let bucket = crate::state::jetstream::bucket_name(id);
            needs.streams.push(format!("KV_{bucket}"));
            needs.state_bucket = Some(bucket);
        }
        needs
    }
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

fn create(stream: &str) -> String {
    format!("$JS.API.STREAM.CREATE.{stream}")
}

/// Reads and creating the lattice's streams: what every `cbs` command and
/// host opening the lattice does.
fn lattice_access() -> BTreeSet<String> {
    let mut publish = set(JS_READ.iter().copied());
    publish.extend(LATTICE_STREAMS.iter().map(|s| create(s)));
    publish.insert("$SRV.>".into());
    publish.insert("cbs-audit.>".into());
    publish
}

/// A host serving `cells` (and running sagas, with `sagas`): serves and
/// calls cells, reports itself, follows the desired state; no write to
/// the desired state, no delete, purge or change of the audit stream.
pub fn host(cells: &[CellNeeds], sagas: bool) -> Permissions {
    let mut publish = lattice_access();
    publish.extend(set(["cbs.>", "cbs-record.>"]));
    publish.extend(HOST_BUCKETS.iter().map(|b| format!("$KV.{b}.>")));
    let mut subscribe = set(["cbs.>", "$SRV.>", "cbs-flows.query", "_INBOX.>"]);
    let mut streams = BTreeSet::new();
    // Takes from a stream: acknowledges, dead-letters (a saga's start too).
    let mut consumes = sagas;
    for cell in cells {
        publish.extend(cell.publishes.iter().cloned());
        publish.extend(cell.durable_subjects.iter().cloned());
        subscribe.extend(cell.subscribes.iter().cloned());
        streams.extend(cell.streams.iter().cloned());
        if let Some(bucket) = &cell.state_bucket {
            publish.insert(format!("$KV.{bucket}.>"));
        }
        consumes |= cell.consumes;
    }
    if consumes {
        publish.insert("cbs-dlq.>".into());
        publish.insert("$JS.ACK.>".into());
        streams.insert(crate::durable::DLQ_STREAM.into());
    }
    if sagas {
        let journal = crate::state::jetstream::bucket_name(crate::saga::journal::BUCKET);
        publish.insert("cbs-saga.>".into());
        publish.insert(format!("$KV.{journal}.>"));
        streams.insert(crate::saga::worker::STREAM.into());
        streams.insert(format!("KV_{journal}"));
        // It reads the sagas' definitions there, and opening makes it.
        publish.insert(create("KV_cbs-domains"));
    }
    for stream in &streams {
        publish.insert(create(stream));
        publish.insert(format!("$JS.API.STREAM.UPDATE.{stream}"));
    }
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
        ..Permissions::default()
    }
}

/// A deployer of `cells`: writes desired state, bundles, domains and saga
/// starts, records and tests releases on trial; cannot serve or call a
/// cell, nor delete, purge or change any stream but the bundles' and its
/// cells' recordings.
pub fn deployer(cells: &[String]) -> Permissions {
    let mut publish = lattice_access();
    publish.extend(set([
        "$KV.cbs-desired.>",
        "$KV.cbs-expects.>",
        "$KV.cbs-domains.>",
        // Anyone may store a policy: hosts enforce only one signed by a
        // key they trust for policies (ADR 32).
        "$KV.cbs-policy.>",
        "$O.cbs-bundles.>",
        "cbs.~p.>",
        "cbs-saga.>",
        "$JS.API.STREAM.PURGE.OBJ_cbs-bundles",
    ]));
    let journal = crate::state::jetstream::bucket_name(crate::saga::journal::BUCKET);
    for stream in [
        "KV_cbs-expects".to_owned(),
        "KV_cbs-domains".to_owned(),
        crate::saga::worker::STREAM.to_owned(),
        format!("KV_{journal}"),
    ] {
        publish.insert(create(&stream));
    }
    for cell in cells {
        let record = crate::shadow::stream(cell);
        publish.insert(create(&record));
        publish.insert(format!("$JS.API.STREAM.DELETE.{record}"));
    }
    Permissions {
        publish,
        subscribe: set(["_INBOX.>"]),
        ..Permissions::default()
    }
}

/// A caller: calls cells, never the subjects where hosts share load and
/// forward to each other, nor a release on trial; no `$` subject at all.
pub fn caller() -> Permissions {
    Permissions {
        publish: set(["cbs.>"]),
        publish_deny: set(["cbs.~l.>", "cbs.~h.>", "cbs.~p.>"]),
        subscribe: set(["_INBOX.>"]),
        allow_responses: false,
    }
}

/// An observer: lists hosts, cells and flows; calls and changes nothing.
pub fn observer() -> Permissions {
    Permissions {
        publish: set(["$SRV.>", "cbs-flows.query"]),
        subscribe: set(["_INBOX.>"]),
        ..Permissions::default()
    }
}

impl Permissions {
    /// The `permissions` block of a NATS server configuration's user.
    pub fn to_conf(&self, indent: &str) -> String {
        let list = |items: &BTreeSet<String>| {
            let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut out = format!("{{\n{indent}  publish: {{ allow: {}", list(&self.publish));
        if !self.publish_deny.is_empty() {
            out.push_str(&format!(", deny: {}", list(&self.publish_deny)));
        }
        out.push_str(&format!(
            " }}\n{indent}  subscribe: {{ allow: {} }}\n",
            list(&self.subscribe)
        ));
        if self.allow_responses {
            out.push_str(&format!("{indent}  allow_responses: true\n"));
        }
        out.push_str(&format!("{indent}}}"));
        out
    }
}

/// A string as the NATS configuration reads it: quoted, so `$` is never a
/// variable and `>` never ends a token.
pub fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_reaches_its_cells_streams_and_buckets_by_name_only() {
        let manifest = Manifest::parse(
            r#"
            id = "orders.ledger"
            version = "1.0.0"
            runtime = "wasm"
            component = "c.wasm"
            [capabilities]
            publish = ["orders.placed"]
            [capabilities.state]
            "#,
        )
        .unwrap();
        let needs = CellNeeds::of(&manifest);
        let bucket = crate::state::jetstream::bucket_name("orders.ledger");
        let host = host(&[needs], false);
        assert!(host.publish.contains("orders.placed"));
        assert!(host.publish.contains(&format!("$KV.{bucket}.>")));
        assert!(host
            .publish
            .contains(&format!("$JS.API.STREAM.CREATE.KV_{bucket}")));
        assert!(!host.publish.contains("$KV.cbs-desired.>"));
        assert!(!host.publish.iter().any(|s| s.contains("STREAM.DELETE.")
            || s.contains("STREAM.PURGE.")
            || s == "$JS.API.>"
            || s == "$KV.>"));
        assert!(!host.publish.contains("cbs-saga.>"), "no sagas asked");
        assert!(
            !host.publish.contains("cbs-dlq.>"),
            "state alone dead-letters nothing"
        );
        assert!(host.allow_responses);
    }

    #[test]
    fn the_configuration_quotes_every_subject() {
        let conf = caller().to_conf("");
        assert!(conf.contains(r#"allow: ["cbs.>"]"#), "{conf}");
        assert!(
            conf.contains(r#"deny: ["cbs.~h.>", "cbs.~l.>", "cbs.~p.>"]"#),
            "{conf}"
        );
        assert_eq!(quote(r#"a"b"#), r#""a\"b""#);
    }
}
