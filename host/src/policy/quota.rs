//! Tenants' quotas against what the lattice serves: cells, replicas and
//! memory of a tenant's cells together, checked when one of them is
//! deployed (by the deployer and by each host) and reported by `cbs quota
//! show` and `cbs compliance`.

use serde::Serialize;

use super::{Policy, TenantRules};

/// A deployed cell's current release, as quotas count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub cell: String,
    /// None: every watching host serves it.
    pub replicas: Option<u32>,
    pub memory_mb: u32,
}

/// What a tenant takes, and may take.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Use {
    pub tenant: String,
    pub cells: u64,
    pub replicas: u64,
    pub memory_mb: u64,
    /// Cells served by every watching host: their replicas are not known.
    pub unplaced: Vec<String>,
    #[serde(skip)]
    pub rules: TenantRules,
}

impl Use {
    /// Each way it is past its quota, in words.
    pub fn over(&self) -> Vec<String> {
        let r = &self.rules;
        let mut over = Vec::new();
        let mut past = |what: &str, used: u64, max: Option<u64>| {
            if let Some(max) = max.filter(|max| used > *max) {
                over.push(format!(
                    "tenants.{}.max_{what}: {used}, the quota is {max}",
                    self.tenant
                ));
            }
        };
        past("cells", self.cells, r.max_cells.map(u64::from));
        past("replicas", self.replicas, r.max_replicas.map(u64::from));
        past("memory_mb", self.memory_mb, r.max_memory_mb);
        if (r.max_replicas.is_some() || r.max_memory_mb.is_some()) && !self.unplaced.is_empty() {
            over.push(format!(
                "tenants.{}: {} served by every watching host, which a replica or memory quota cannot count: deploy with --replicas",
                self.tenant,
                self.unplaced.join(", ")
            ));
        }
        over
    }
}

/// Each tenant's use of what `deployed` holds.
pub fn usage(policy: &Policy, deployed: &[Deployed]) -> Vec<Use> {
    policy
        .tenants
        .iter()
        .map(|(name, rules)| {
            let mut used = Use {
                tenant: name.clone(),
                cells: 0,
                replicas: 0,
                memory_mb: 0,
                unplaced: Vec::new(),
                rules: rules.clone(),
            };
            let theirs = deployed
                .iter()
                .filter(|d| policy.tenant_of(&d.cell).is_some_and(|(t, _)| t == name));
            for d in theirs {
                used.cells += 1;
                let replicas = u64::from(d.replicas.unwrap_or(1));
                used.replicas += replicas;
                used.memory_mb += replicas * u64::from(d.memory_mb);
                if d.replicas.is_none() {
                    used.unplaced.push(d.cell.clone());
                }
            }
            used
        })
        .collect()
}

/// What deploying `new` (replacing its cell's release in `deployed`) makes
/// its tenant use, when it has one.
pub fn with(policy: &Policy, deployed: &[Deployed], new: Deployed) -> Option<Use> {
    let (tenant, _) = policy.tenant_of(&new.cell)?;
    let tenant = tenant.clone();
    let mut after: Vec<Deployed> = deployed
        .iter()
        .filter(|d| d.cell != new.cell)
        .cloned()
        .collect();
    after.push(new);
    usage(policy, &after)
        .into_iter()
        .find(|u| u.tenant == tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed(cell: &str, replicas: Option<u32>, memory_mb: u32) -> Deployed {
        Deployed {
            cell: cell.into(),
            replicas,
            memory_mb,
        }
    }

    #[test]
    fn a_tenants_cells_replicas_and_memory_add_up_against_its_quota() {
        let policy = Policy::parse(
            "version = 1\n[tenants.shop]\ncells = \"shop.\"\nmax_cells = 2\nmax_replicas = 3\nmax_memory_mb = 256\n[tenants.eu]\ncells = \"shop.eu.\"\nmax_cells = 1\n",
        )
        .unwrap();
        let now = [
            deployed("shop.cart", Some(2), 64),
            deployed("shop.eu.tax", Some(1), 32),
            deployed("logic.greet", None, 16),
        ];
        let used = usage(&policy, &now);
        let shop = used.iter().find(|u| u.tenant == "shop").unwrap();
        assert_eq!(
            (shop.cells, shop.replicas, shop.memory_mb),
            (1, 2, 128),
            "shop.eu. is the other tenant's"
        );
        assert!(shop.over().is_empty());
        let after = with(&policy, &now, deployed("shop.pay", Some(2), 128)).unwrap();
        assert_eq!(
            after.over(),
            [
                "tenants.shop.max_replicas: 4, the quota is 3",
                "tenants.shop.max_memory_mb: 384, the quota is 256"
            ]
        );
        let replaced = with(&policy, &now, deployed("shop.cart", Some(3), 64)).unwrap();
        assert_eq!(replaced.cells, 1, "a new release replaces its cell's");
        assert!(with(&policy, &now, deployed("logic.other", None, 16)).is_none());
        let everywhere = with(&policy, &now, deployed("shop.pay", None, 16)).unwrap();
        assert!(
            everywhere.over()[0].contains("shop.pay served by every watching host"),
            "{:?}",
            everywhere.over()
        );
    }
}
