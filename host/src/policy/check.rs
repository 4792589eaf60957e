//! What a policy says of one release: each rule that applies, met or not,
//! with the value found and the value allowed. The deployer and every host
//! run the same check.

use std::fmt;

use crate::bundle::{Bundle, PublicKey, Trust};
use crate::bus::subject::Pattern;
use crate::manifest::{Manifest, RuntimeKind};

use super::{FileAccess, Policy};

/// A release as the policy sees it.
pub struct Candidate<'a> {
    pub bundle: &'a Bundle,
    pub manifest: &'a Manifest,
    /// The most replicas it may have (`--replicas`, `--max-replicas`);
    /// none: every watching host serves it.
    pub replicas: Option<u32>,
    /// The domain it belongs to (`cbs apply`), if any.
    pub domain: Option<&'a str>,
    /// The registry it was pulled from (`HOST[:PORT]`); none: a file.
    pub origin: Option<&'a str>,
    /// The lattice's deployed cells, for its tenant's quota (empty: the
    /// quota is not checked).
    pub usage: &'a [super::quota::Deployed],
}

/// One rule applied to a release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The rule, as the policy file names it (`limits.memory_mb`).
    pub rule: String,
    pub met: bool,
    /// What was found, and what the rule allows.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// Every rule of `policy` that applies to `c`, in the file's order.
pub fn check(policy: &Policy, c: &Candidate<'_>) -> Vec<Finding> {
    let mut out = Findings(Vec::new());
    runtimes(policy, c, &mut out);
    contracts(policy, c, &mut out);
    signers(policy, c, &mut out);
    limits(policy, c, &mut out);
    capabilities(policy, c, &mut out);
    registries(policy, c, &mut out);
    tenant(policy, c, &mut out);
    out.0
}

/// The rules `c` breaks.
pub fn violations(policy: &Policy, c: &Candidate<'_>) -> Vec<Finding> {
    check(policy, c).into_iter().filter(|f| !f.met).collect()
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, rule: &str, met: bool, detail: String) {
        self.0.push(Finding {
            rule: rule.to_owned(),
            met,
            detail,
        });
    }

    /// A number at most `max`.
    fn at_most(&mut self, rule: &str, what: &str, found: u64, max: u64) {
        self.add(
            rule,
            found <= max,
            format!("the cell asks {found}{what}, the policy allows at most {max}"),
        );
    }
}

fn runtimes(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    let Some(allowed) = &p.runtimes else { return };
    let runtime = c.manifest.runtime;
    let names: Vec<String> = allowed.iter().map(RuntimeKind::to_string).collect();
    out.add(
        "runtimes",
        allowed.contains(&runtime),
        format!("runtime {runtime}; allowed: {}", names.join(", ")),
    );
}

fn contracts(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    if !p.contracts {
        return;
    }
    let missing: Vec<&str> = [("input", &c.manifest.input), ("output", &c.manifest.output)]
        .into_iter()
        .filter(|(_, schema)| schema.is_none())
        .map(|(name, _)| name)
        .collect();
    let detail = match missing.as_slice() {
        [] => "input and output schemas".to_owned(),
        _ => format!(
            "no {} schema: give the cell's contract (input = ..., output = ... in cell.toml)",
            missing.join(" or ")
        ),
    };
    out.add("contracts", missing.is_empty(), detail);
}

fn signers(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    for rule in &p.signers {
        let (applies, scope) = match (&rule.cells, &rule.domain) {
            (Some(prefix), _) => (
                c.manifest.id.starts_with(prefix.as_str()),
                format!("cells {prefix:?}"),
            ),
            (_, Some(domain)) => (
                c.domain == Some(domain.as_str()),
                format!("domain {domain}"),
            ),
            (None, None) => (false, String::new()),
        };
        if !applies {
            continue;
        }
        let keys: Vec<PublicKey> = rule
            .keys
            .iter()
            .filter_map(|k| PublicKey::from_hex(k).ok())
            .collect();
        let signed = c.bundle.signer().is_some() && c.bundle.verify(&Trust::new(keys)).is_ok();
        let by = c.bundle.signer().map_or("unsigned".to_owned(), short);
        out.add(
            "signers",
            signed,
            format!(
                "{scope} must be signed by one of {} key(s); signed by: {by}",
                rule.keys.len()
            ),
        );
    }
}

fn limits(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    let (m, rules) = (c.manifest, &p.limits);
    if let Some(max) = rules.memory_mb {
        out.at_most("limits.memory_mb", " MiB", m.memory_mb().into(), max.into());
    }
    if let (Some(max), false) = (rules.cpu_seconds, m.runtime == RuntimeKind::Wasm) {
        match m.limits.cpu_seconds {
            Some(cpu) => out.at_most("limits.cpu_seconds", " s", cpu, max),
            None => out.add(
                "limits.cpu_seconds",
                false,
                format!(
                    "a process cell without [limits] cpu_seconds; the policy allows at most {max}"
                ),
            ),
        }
    }
    if let Some(max) = rules.concurrency {
        out.at_most(
            "limits.concurrency",
            "",
            m.limits.concurrency.into(),
            max.into(),
        );
    }
    if let Some(max) = rules.replicas {
        match c.replicas {
            Some(n) => out.at_most("limits.replicas", " replicas", n.into(), max.into()),
            None => out.add(
                "limits.replicas",
                false,
                format!("served by every watching host; the policy allows at most {max} replicas: deploy with --replicas"),
            ),
        }
    }
}

fn capabilities(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    let (granted, rules) = (&c.manifest.capabilities, &p.capabilities);
    if let Some(access) = rules.files {
        let asked = match granted.files.iter().map(|f| f.write).max() {
            None => FileAccess::None,
            Some(false) => FileAccess::Read,
            Some(true) => FileAccess::Write,
        };
        out.add(
            "capabilities.files",
            asked <= access,
            format!(
                "the cell asks {} access to host folders, the policy allows {}",
                asked.name(),
                access.name()
            ),
        );
    }
    let flags = [
        (
            "capabilities.env",
            rules.env,
            !granted.env.is_empty(),
            "environment variables",
        ),
        (
            "capabilities.precise_clocks",
            rules.precise_clocks,
            granted.precise_clocks,
            "precise clocks",
        ),
        (
            "capabilities.stdio",
            rules.stdio,
            granted.stdio,
            "the host's stdio",
        ),
    ];
    for (rule, allowed, asked, what) in flags {
        if let Some(allowed) = allowed {
            let verdict = if allowed { "allows" } else { "does not allow" };
            let asks = if asked { "asks" } else { "does not ask" };
            out.add(
                rule,
                allowed || !asked,
                format!("the cell {asks} for {what}; the policy {verdict} them"),
            );
        }
    }
    if let Some(allowed) = p.publish_patterns() {
        let outside: Vec<&String> = granted
            .publish
            .iter()
            .chain(&granted.publish_durable)
            .filter(|s| Pattern::parse(s).map_or(true, |s| !allowed.iter().any(|a| s.within(a))))
            .collect();
        let names = join(rules.publish.as_deref().unwrap_or_default());
        let detail = match outside.as_slice() {
            [] => format!("every publish grant within {names}"),
            _ => format!("publish grants outside {names}: {}", join(&outside)),
        };
        out.add("capabilities.publish", outside.is_empty(), detail);
    }
    if let Some(max) = rules.state_max_bytes {
        let asked = granted.state.map_or(0, |s| s.max_bytes);
        out.at_most(
            "capabilities.state_max_bytes",
            " bytes of state",
            asked,
            max,
        );
    }
}

fn registries(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    let Some(rules) = &p.registries else { return };
    match c.origin {
        Some(registry) => out.add(
            "registries.allowed",
            rules.allowed.iter().any(|r| r == registry),
            format!("pulled from {registry}; allowed: {}", join(&rules.allowed)),
        ),
        None if rules.required => out.add(
            "registries.required",
            false,
            format!(
                "deployed from a file; the policy wants cells from a registry: {}",
                join(&rules.allowed)
            ),
        ),
        None => {}
    }
}

fn join<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    match items.is_empty() {
        true => "(none)".to_owned(),
        false => items.join(", "),
    }
}

/// Its tenant's quota with it deployed, when the lattice's cells are known.
fn tenant(p: &Policy, c: &Candidate<'_>, out: &mut Findings) {
    if c.usage.is_empty() {
        return;
    }
    let new = super::quota::Deployed {
        cell: c.manifest.id.clone(),
        replicas: c.replicas,
        memory_mb: c.manifest.memory_mb(),
    };
    let Some(used) = super::quota::with(p, c.usage, new) else {
        return;
    };
    let over = used.over();
    let detail = match over.is_empty() {
        true => format!(
            "with it, tenant {} has {} cell(s), {} replica(s), {} MiB",
            used.tenant, used.cells, used.replicas, used.memory_mb
        ),
        false => over.join("; "),
    };
    out.add(&format!("tenants.{}", used.tenant), over.is_empty(), detail);
}

/// The first 12 hex digits of a key, as logs show it.
pub fn short(key: &str) -> String {
    key.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bundle::{sha256_hex, KeyPair};

    /// A bundle of just `toml` as its cell.toml (what the checks read).
    fn bundle(toml: &str) -> Bundle {
        let manifest = Manifest::parse(toml).unwrap();
        let files = BTreeMap::from([("cell.toml".to_owned(), sha256_hex(toml.as_bytes()))]);
        let listed = serde_json::json!({"format": 1, "cell": manifest.id, "version": manifest.version, "files": files});
        Bundle::from_files(BTreeMap::from([
            ("cell.toml".to_owned(), toml.as_bytes().to_vec()),
            (
                "MANIFEST.json".to_owned(),
                serde_json::to_vec(&listed).unwrap(),
            ),
        ]))
        .unwrap()
    }

    fn broken(
        policy: &str,
        toml: &str,
        replicas: Option<u32>,
        origin: Option<&str>,
    ) -> Vec<String> {
        // The bundle holds CELL: a bundle cannot grant folders, a
        // manifest read from a folder can.
        let (policy, bundle) = (Policy::parse(policy).unwrap(), bundle(CELL));
        let manifest = Manifest::parse(toml).unwrap();
        let c = Candidate {
            bundle: &bundle,
            manifest: &manifest,
            replicas,
            domain: None,
            origin,
            usage: &[],
        };
        violations(&policy, &c)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const CELL: &str = "id = \"shop.cart\"\nversion = \"1.0.0\"\nruntime = \"python\"\n[python]\nmodule = \"cart\"\nhandler = \"handle\"\n";

    #[test]
    fn each_rule_names_the_value_found_and_the_value_allowed() {
        let caps = "[capabilities]\npublish = [\"events.>\", \"audit.x\"]\nenv = { A = \"b\" }\nprecise_clocks = true\n[capabilities.state]\nmax_bytes = 2048\nmax_value_bytes = 1024\n[limits]\nconcurrency = 64\n";
        let policy = "version = 1\ncontracts = false\nruntimes = [\"wasm\"]\n[limits]\ncpu_seconds = 10\nconcurrency = 8\nreplicas = 3\n[capabilities]\nenv = false\nprecise_clocks = false\npublish = [\"events.>\"]\nstate_max_bytes = 1024\n[registries]\nallowed = [\"r.example\"]\n";
        let found = broken(policy, &format!("{CELL}{caps}"), None, Some("evil.example"));
        let expect = [
            "runtimes: runtime python; allowed: wasm",
            "limits.cpu_seconds: a process cell without [limits] cpu_seconds; the policy allows at most 10",
            "limits.concurrency: the cell asks 64, the policy allows at most 8",
            "limits.replicas: served by every watching host",
            "capabilities.env: the cell asks for environment variables; the policy does not allow them",
            "capabilities.precise_clocks: the cell asks for precise clocks",
            "capabilities.publish: publish grants outside events.>: audit.x",
            "capabilities.state_max_bytes: the cell asks 2048 bytes of state, the policy allows at most 1024",
            "registries.allowed: pulled from evil.example; allowed: r.example",
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for (found, expect) in found.iter().zip(expect) {
            assert!(found.starts_with(expect), "{found} / {expect}");
        }
        let fine = format!("{CELL}[limits]\ncpu_seconds = 5\nconcurrency = 8\n[capabilities]\npublish = [\"events.a.*\"]\n");
        let policy = policy.replace("[\"wasm\"]", "[\"wasm\", \"python\"]");
        assert!(broken(&policy, &fine, Some(3), Some("r.example")).is_empty());
        let err = broken(&policy, &fine, Some(4), None);
        assert_eq!(
            err,
            ["limits.replicas: the cell asks 4 replicas, the policy allows at most 3"]
        );
    }

    #[test]
    fn contracts_signers_and_files() {
        let key = KeyPair::generate().unwrap();
        let policy = format!("version = 1\n[[signers]]\ncells = \"shop.\"\nkeys = [\"{}\"]\n[[signers]]\ncells = \"other.\"\nkeys = [\"{}\"]\n[capabilities]\nfiles = \"read\"\n[registries]\nallowed = []\nrequired = true\n", key.public().to_hex(), key.public().to_hex());
        let toml =
            format!("{CELL}[[capabilities.files]]\nhost = \"d\"\nguest = \"/d\"\nwrite = true\n");
        let found = broken(&policy, &toml, None, None);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("contracts: no input or output schema"));
        assert!(found[1]
            .contains("cells \"shop.\" must be signed by one of 1 key(s); signed by: unsigned"));
        assert!(
            found[2].contains("the cell asks write access to host folders, the policy allows read")
        );
        assert!(found[3].starts_with("registries.required: deployed from a file"));
        let mut signed = bundle(CELL);
        signed.sign(&key);
        let manifest = Manifest::parse(&toml).unwrap();
        let c = Candidate {
            bundle: &signed,
            manifest: &manifest,
            replicas: None,
            domain: None,
            origin: Some("x"),
            usage: &[],
        };
        let p = Policy::parse(&policy).unwrap();
        let rules: Vec<String> = violations(&p, &c).into_iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            ["contracts", "capabilities.files", "registries.allowed"]
        );
    }
}
