//! Domain boundaries enforced by the NATS server: each domain its own
//! account, whose users are the domain's host, deployer, caller and
//! observer (each with its role's permissions, `crate::roles`); a service
//! export for each exported cell, imported by the domains that list it
//! under `uses` and by one account for callers outside every domain. What
//! a domain does not export has no way into another account: the server
//! answers "no responders", whoever asks.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;

use super::spec::Spec;
use crate::manifest::Manifest;
use crate::roles::{self, quote, CellNeeds, Permissions};

/// The roles each domain account has a user for.
pub const ROLES: [&str; 4] = ["host", "deployer", "caller", "observer"];

/// One account of the generated configuration.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    /// Its users: each role with its permissions.
    pub users: Vec<(&'static str, Permissions)>,
    /// Its domain keeps its state, streams and desired state here.
    pub jetstream: bool,
    /// Each exported subject, with the accounts that import it.
    pub exports: BTreeMap<String, BTreeSet<String>>,
    /// Each imported subject, with the account that exports it.
    pub imports: BTreeMap<String, String>,
}

/// One domain: its spec and the manifests of its cells.
pub struct Domain<'a> {
    pub spec: &'a Spec,
    pub manifests: Vec<&'a Manifest>,
}

/// The accounts for `domains`, and `public` for callers outside all of them.
pub fn layout(domains: &[Domain<'_>], public: &str) -> anyhow::Result<Vec<Account>> {
    owners(domains, public)?;
    // Accounts in the order of `domains`, then the public one.
    let mut accounts: Vec<Account> = domains.iter().map(domain_account).collect();
    accounts.push(Account {
        name: public.to_owned(),
        users: vec![("caller", roles::caller())],
        jetstream: false,
        exports: BTreeMap::new(),
        imports: BTreeMap::new(),
    });
    let outside = domains.len();
    // Every export first: a domain may use one whose spec comes later.
    for (at, domain) in domains.iter().enumerate() {
        for cell in &domain.spec.exports {
            grant(&mut accounts, at, outside, cell);
        }
    }
    for (at, domain) in domains.iter().enumerate() {
        let spec = domain.spec;
        for used in &spec.uses {
            let Some(theirs) = domains.iter().position(|d| d.spec.domain == used.domain) else {
                bail!(
                    "domain {} uses domain {}, which is not among the specs given: give its spec too",
                    spec.domain,
                    used.domain
                );
            };
            for cell in &used.cells {
                if !domains[theirs].spec.exports.contains(cell) {
                    bail!(
                        "domain {} uses {cell}, which domain {} does not export",
                        spec.domain,
                        used.domain
                    );
                }
                grant(&mut accounts, theirs, at, cell);
            }
        }
    }
    Ok(accounts)
}

/// Which domain each cell belongs to; a cell in two, a domain twice or a
/// domain named as the public account is refused.
fn owners<'a>(
    domains: &'a [Domain<'_>],
    public: &str,
) -> anyhow::Result<BTreeMap<&'a str, &'a str>> {
    let mut owner = BTreeMap::new();
    let mut names = BTreeSet::new();
    for domain in domains {
        let name = domain.spec.domain.as_str();
        if name == public {
            bail!("domain {name} has the name of the account for callers outside every domain: choose another with --public");
        }
        if !names.insert(name) {
            bail!("domain {name} is given twice");
        }
        for manifest in &domain.manifests {
            if let Some(other) = owner.insert(manifest.id.as_str(), name) {
                bail!("cell {} is in domain {other} and in domain {name}: a cell belongs to one domain", manifest.id);
            }
        }
    }
    Ok(owner)
}

fn domain_account(domain: &Domain<'_>) -> Account {
    let needs: Vec<CellNeeds> = domain.manifests.iter().map(|m| CellNeeds::of(m)).collect();
    let cells: Vec<String> = domain.manifests.iter().map(|m| m.id.clone()).collect();
    let sagas = !domain.spec.sagas.is_empty();
    Account {
        name: domain.spec.domain.clone(),
        users: vec![
            ("host", roles::host(&needs, sagas)),
            ("deployer", roles::deployer(&cells)),
            ("caller", roles::caller()),
            ("observer", roles::observer()),
        ],
        jetstream: true,
        exports: BTreeMap::new(),
        imports: BTreeMap::new(),
    }
}

/// The account at `to` imports `cell` from the account at `from`, which
/// exports it to `to` (and to whoever it already exported it to).
fn grant(accounts: &mut [Account], from: usize, to: usize, cell: &str) {
    let subject = crate::subjects::subject_of(cell);
    let (exporter, importer) = (accounts[from].name.clone(), accounts[to].name.clone());
    accounts[from]
        .exports
        .entry(subject.clone())
        .or_default()
        .insert(importer);
    accounts[to].imports.insert(subject, exporter);
}

/// The configuration's `accounts` block, each user named by the public
/// nkey `key(account, role)` gives.
pub fn render(accounts: &[Account], key: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::from("accounts {\n");
    for account in accounts {
        out.push_str(&format!("  {}: {{\n", quote(&account.name)));
        if account.jetstream {
            out.push_str("    jetstream: enabled\n");
        }
        out.push_str("    users: [\n");
        for (role, permissions) in &account.users {
            out.push_str(&format!(
                "      # {}-{role}\n      {{ nkey: {}, permissions: {} }}\n",
                account.name,
                quote(&key(&account.name, role)),
                permissions.to_conf("      ")
            ));
        }
        out.push_str("    ]\n");
        if !account.exports.is_empty() {
            out.push_str("    exports: [\n");
            for (subject, importers) in &account.exports {
                let names: Vec<String> = importers.iter().map(|a| quote(a)).collect();
                out.push_str(&format!(
                    "      {{ service: {}, accounts: [{}] }}\n",
                    quote(subject),
                    names.join(", ")
                ));
            }
            out.push_str("    ]\n");
        }
        if !account.imports.is_empty() {
            out.push_str("    imports: [\n");
            for (subject, exporter) in &account.imports {
                out.push_str(&format!(
                    "      {{ service: {{ account: {}, subject: {} }} }}\n",
                    quote(exporter),
                    quote(subject)
                ));
            }
            out.push_str("    ]\n");
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str) -> Manifest {
        Manifest::parse(&format!(
            "id = {id:?}\nversion = \"1.0.0\"\nruntime = \"wasm\"\ncomponent = \"c.wasm\"\n"
        ))
        .unwrap()
    }

    fn spec(text: &str) -> Spec {
        Spec::parse(text).unwrap()
    }

    #[test]
    fn exports_are_imported_by_their_users_and_the_outside_only() {
        let orders = spec("domain: orders\ncells:\n  - bundle: a.cbs\n  - bundle: b.cbs\nexports: [orders.place]\n");
        let shop = spec("domain: shop\ncells:\n  - bundle: c.cbs\nuses:\n  - domain: orders\n    cells: [orders.place]\n");
        let (place, ledger, web) = (
            manifest("orders.place"),
            manifest("orders.ledger"),
            manifest("shop.web"),
        );
        let domains = [
            Domain {
                spec: &orders,
                manifests: vec![&place, &ledger],
            },
            Domain {
                spec: &shop,
                manifests: vec![&web],
            },
        ];
        let accounts = layout(&domains, "public").unwrap();
        let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["orders", "shop", "public"]);
        assert_eq!(
            accounts[0].exports["cbs.orders.place"],
            BTreeSet::from(["public".to_owned(), "shop".to_owned()])
        );
        assert_eq!(
            accounts[0].exports.len(),
            1,
            "orders.ledger is not exported"
        );
        assert_eq!(accounts[1].imports["cbs.orders.place"], "orders");
        assert_eq!(accounts[2].imports.len(), 1);
        let conf = render(&accounts, |a, r| format!("U-{a}-{r}"));
        assert!(
            conf.contains(r#"{ service: { account: "orders", subject: "cbs.orders.place" } }"#),
            "{conf}"
        );
        // The user's spec first: the export is granted to it all the same.
        let reversed = [
            Domain {
                spec: &shop,
                manifests: vec![&web],
            },
            Domain {
                spec: &orders,
                manifests: vec![&place, &ledger],
            },
        ];
        let accounts = layout(&reversed, "public").unwrap();
        assert_eq!(
            accounts[1].exports["cbs.orders.place"],
            BTreeSet::from(["public".to_owned(), "shop".to_owned()])
        );
        assert!(conf.contains(r#"nkey: "U-shop-host""#), "{conf}");
    }

    #[test]
    fn a_use_of_what_is_not_exported_or_not_given_is_refused() {
        let orders = spec("domain: orders\ncells:\n  - bundle: a.cbs\n");
        let shop = spec("domain: shop\ncells:\n  - bundle: c.cbs\nuses:\n  - domain: orders\n    cells: [orders.place]\n");
        let (place, web) = (manifest("orders.place"), manifest("shop.web"));
        let both = [
            Domain {
                spec: &orders,
                manifests: vec![&place],
            },
            Domain {
                spec: &shop,
                manifests: vec![&web],
            },
        ];
        let e = layout(&both, "public").unwrap_err().to_string();
        assert!(e.contains("which domain orders does not export"), "{e}");
        let e = layout(&both[1..], "public").unwrap_err().to_string();
        assert!(e.contains("not among the specs given"), "{e}");
        let e = layout(&both[..1], "orders").unwrap_err().to_string();
        assert!(e.contains("--public"), "{e}");
    }
}
