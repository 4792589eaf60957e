//! `cbs deps`: what a deployed cell calls, with the versions resolved; and
//! the dependency gate of `cbs deploy` (refuse, or `--with-deps` pull the
//! missing cells from the registry and deploy them first).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cbs_host::audit::{self, Action, Change};
use cbs_host::bundle::{Bundle, Trust};
use cbs_host::bus::nats::NatsBus;
use cbs_host::deploy::deps::Lattice;
use cbs_host::deploy::rollout::{self, Consent, Outcome, Scale};
use cbs_host::deploy::Store;
use cbs_host::host::trial::InProcess;
use cbs_host::manifest::check_cell_id;
use cbs_host::registry::{self, Reference};
use clap::Args;

use crate::args::{NatsArgs, RegistryArgs};
use crate::commands::pull::pull_verified;

/// Print what a deployed cell calls, recursively, with the version the
/// lattice serves of each and the range its caller asked for
/// (`calls = ["logic.greet@^1"]`). Exits 1 when a call is not answered in
/// a compatible version.
#[derive(Args)]
pub struct DepsArgs {
    /// The cell id, e.g. app.front.
    cell_id: String,
    /// One JSON document instead of the tree.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: DepsArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let (_bus, store) = args.nats.open_store().await?;
    let lattice = Lattice::read(&store).await?;
    if lattice.version(&args.cell_id).is_none() {
        bail!("cell {} is not deployed (see `cbs ls`)", args.cell_id);
    }
    let tree = lattice.tree(&args.cell_id);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tree)?);
    } else {
        print!("{}", tree.render());
    }
    Ok(if tree.satisfied() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cbs deploy`'s flags for dependencies.
#[derive(Args, Clone)]
pub struct WithDeps {
    /// Pull the cells this one calls that the lattice does not serve in a
    /// compatible version from the registry (the repository next to the
    /// deployed reference, or --deps-from) and deploy them first.
    #[arg(long)]
    pub with_deps: bool,
    /// Where --with-deps looks for a cell: HOST[:PORT]/NAMESPACE, the cell
    /// in NAMESPACE/<cell id> [default: next to the deployed reference].
    #[arg(long, value_name = "HOST/NAMESPACE", requires = "with_deps")]
    pub deps_from: Option<String>,
}

/// What the gate needs of the deploy.
pub struct Gate<'a> {
    pub bus: &'a NatsBus,
    pub store: &'a Store,
    pub nats: &'a NatsArgs,
    pub registry: &'a RegistryArgs,
    pub trust: &'a Trust,
    pub deps: &'a WithDeps,
    pub force: bool,
    pub wait: Option<Duration>,
}

/// Where a dependency is looked for in a registry.
enum Source {
    /// The repository next to this one.
    Beside(Reference),
    /// `<namespace>/<cell id>`.
    Under(Reference),
}

impl Source {
    fn locate(&self, cell: &str) -> anyhow::Result<Reference> {
        match self {
            Self::Beside(r) => r.sibling(cell),
            Self::Under(ns) => ns.child(cell),
        }
    }
}

/// Deepest chain of dependencies `--with-deps` follows.
const MAX_DEPTH: usize = 8;

impl Gate<'_> {
    /// Refuses `bundle` when a deployed caller's range excludes its version,
    /// or when a cell it calls is not served in a version it works with
    /// (unless --with-deps deploys it, or --force).
    pub async fn check(&self, bundle: &Bundle, origin: Option<&Reference>) -> anyhow::Result<()> {
        let source = match (&self.deps.deps_from, origin) {
            (Some(ns), _) => Some(Source::Under(Reference::parse_namespace(ns)?)),
            (None, Some(r)) => Some(Source::Beside(r.clone())),
            (None, None) => None,
        };
        self.check_at(bundle, source.as_ref(), 0, &mut BTreeSet::new())
            .await
    }

    async fn check_at(
        &self,
        bundle: &Bundle,
        source: Option<&Source>,
        depth: usize,
        visiting: &mut BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let manifest = bundle.cell_manifest()?;
        visiting.insert(manifest.id.clone());
        let lattice = Lattice::read(self.store).await?;
        self.callers_kept(&lattice, &manifest.id, &manifest.version)?;
        let calls: Vec<_> = manifest
            .capabilities
            .calls
            .iter()
            // A grant without a range is a permission, not a dependency:
            // the callee may be served by hosts outside the desired state.
            .filter(|c| c.range.is_some())
            .filter(|c| c.cell != manifest.id && !visiting.contains(&c.cell))
            .cloned()
            .collect();
        let unmet = lattice.unmet(&calls);
        if unmet.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = unmet.iter().map(ToString::to_string).collect();
        if !self.deps.with_deps {
            if self.force {
                eprintln!(
                    "warning: {} calls what the lattice does not serve: {} (--force)",
                    manifest.id,
                    list.join(", ")
                );
                return Ok(());
            }
            bail!(
                "{} {} calls what the lattice does not serve in a version it works with: {}; \
                 deploy those first, or pull them from a registry with --with-deps",
                manifest.id,
                manifest.version,
                list.join(", ")
            );
        }
        let Some(source) = source else {
            bail!(
                "--with-deps pulls from the registry the cell came from: deploy it by reference \
                 (HOST/REPOSITORY:TAG) or give --deps-from HOST/NAMESPACE"
            );
        };
        if depth >= MAX_DEPTH {
            bail!("dependencies nest deeper than {MAX_DEPTH} cells");
        }
        for need in unmet {
            let wanted = source.locate(&need.call.cell)?;
            let client = self.registry.client(&wanted.registry).await?;
            let resolved = registry::resolve(&client, &wanted, need.call.range.as_ref())
                .await
                .with_context(|| format!("for {}", need.call))?;
            let (pinned, dep) = pull_verified(self.registry, &resolved, self.trust).await?;
            eprintln!("{} needs {}: deploying {pinned}", manifest.id, need.call);
            Box::pin(self.check_at(&dep, Some(source), depth + 1, visiting)).await?;
            self.deploy(&dep, &pinned.registry).await?;
        }
        Ok(())
    }

    /// Refuses a version that leaves a deployed caller's range unanswered
    /// (another major kept serving beside it answers it: `crate::majors`).
    fn callers_kept(&self, lattice: &Lattice, cell: &str, version: &str) -> anyhow::Result<()> {
        let broken: Vec<String> = lattice
            .would_break(cell, version)
            .into_iter()
            .map(|(caller, call)| format!("{caller} calls {call}"))
            .collect();
        if broken.is_empty() {
            return Ok(());
        }
        if self.force {
            eprintln!(
                "warning: {cell} {version} is outside what deployed callers work with: {} (--force)",
                broken.join(", ")
            );
            return Ok(());
        }
        bail!(
            "{cell} {version} is outside what deployed callers work with: {}; \
             deploy callers that accept it first, or --force",
            broken.join(", ")
        )
    }

    /// A dependency to every watching host, waited for and audited.
    async fn deploy(&self, bundle: &Bundle, registry: &str) -> anyhow::Result<()> {
        let bytes = bundle.to_bytes()?;
        let scale = Scale {
            replicas: None,
            constraints: rollout::placement_labels(bundle, Default::default()),
            spread: None,
            autoscale: None,
            domain: None,
        };
        let consent = Consent {
            force: false,
            rollback: None,
            trial: Some(&InProcess),
            waiver: None,
            origin: Some(registry.to_owned()),
        };
        let cell = &bundle.manifest.cell;
        let rolled = rollout::deploy(
            self.bus.client(),
            self.store,
            bundle,
            &bytes,
            scale,
            consent,
            self.wait,
        )
        .await?;
        let detail = rolled.outcome.summary();
        let change = Change {
            action: Action::Deploy,
            cell,
            version: Some(&bundle.manifest.version),
            digest: Some(&bundle.digest()),
            key: bundle.signer(),
            proof: bundle.signature(),
            from: None,
            detail: detail.clone(),
            contract: rolled.contract,
        };
        audit::record(self.bus.client(), self.nats.options("").as_ref(), change).await;
        if !matches!(rolled.outcome, Outcome::Serving { .. }) {
            bail!("dependency {cell} did not deploy: {detail}");
        }
        eprintln!("{cell} {}: {detail}", bundle.manifest.version);
        Ok(())
    }
}
