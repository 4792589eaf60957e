//! `cbs apply`: a domain spec made real in the lattice.

use crate::args::{trust_of, RegistryArgs};
use crate::commands::pull::pull_verified;
use cbs_host::registry::Reference;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::audit;
use cbs_host::bundle::Bundle;
use cbs_host::deploy::rollout::Consent;
use cbs_host::domain::apply::{self, Lattice};
use cbs_host::domain::plan::{self, Action, Plan, Resolved};
use cbs_host::domain::spec::Spec;
use cbs_host::domain::state::Domains;
use cbs_host::host::trial::InProcess;
use cbs_host::runtime::python::venvs::VenvCache;
use cbs_host::runtime::wasm::{Compiler, ComponentCache, EngineOptions, WasmRuntime};
use clap::Args;

use crate::args::NatsArgs;

/// Apply a domain spec (domain.yaml): plan what changes against the
/// lattice's desired state — each cell added, upgraded (with its contract
/// verdict), rescaled or unchanged, and each cell the domain had that the
/// spec no longer names — print the plan, then apply it through the same
/// rollout as `cbs deploy` and wait for every cell's hosts. Applying the
/// same spec twice changes nothing. The domain's revisions are kept for
/// `cbs rollback --domain NAME`; `cbs export --domain NAME` writes the spec
/// of what runs.
///
/// Example: `cbs apply orders/domain.yaml --dry-run`
#[derive(Args)]
pub struct ApplyArgs {
    /// The domain spec (YAML or JSON).
    #[arg(required_unless_present = "print_schema")]
    spec: Option<PathBuf>,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Print the plan (and the outcome) as JSON.
    #[arg(long)]
    json: bool,
    /// Undeploy the domain's cells the spec no longer names.
    #[arg(long)]
    prune: bool,
    /// Apply even where a contract breaks the deployed one or a consumer's
    /// expectation (as `cbs deploy --force`).
    #[arg(long)]
    force: bool,
    /// How long each cell's hosts may take, in ms.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    wait_ms: u64,
    /// Folder of precompiled components (cells given as folders are built).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Print the JSON Schema of a domain spec and exit.
    #[arg(long, conflicts_with_all = ["spec", "dry_run", "prune"])]
    print_schema: bool,
    #[command(flatten)]
    pulls: Pulls,
    #[command(flatten)]
    nats: NatsArgs,
}

/// How cells given by a registry reference (`ref:`) are pulled.
#[derive(Args, Clone)]
pub struct Pulls {
    /// Cells pulled from a registry (`ref:`) must be signed by this key (a
    /// .pub file or its hex); repeatable. Hosts check their own --trust.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    if args.print_schema {
        println!("{}", serde_json::to_string_pretty(&Spec::schema())?);
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.spec.clone().unwrap_or_default();
    let (spec, resolved) = load(&path, args.cache_dir.as_deref(), &args.pulls).await?;
    let (bus, store) = args.nats.open_store().await?;
    let domains = Domains::open(bus.client()).await?;
    let plan = plan::plan(&store, &domains, &spec, &resolved, args.prune).await?;
    show(&plan, args.json)?;
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if plan.is_noop() {
        eprintln!("domain {}: nothing to change", plan.domain);
        return Ok(ExitCode::SUCCESS);
    }
    let lattice = Lattice {
        client: bus.client(),
        store: &store,
        domains: &domains,
        wait: Duration::from_millis(args.wait_ms),
    };
    let force = args.force;
    let consent = || Consent {
        force,
        rollback: None,
        trial: Some(&InProcess),
        waiver: None,
        origin: None,
    };
    let revision = apply::apply(&lattice, &spec, &plan, &resolved, consent, |line| {
        eprintln!("{line}")
    })
    .await?;
    audit_steps(&bus, &args.nats, &plan, &resolved, &revision).await;
    println!(
        "domain {} revision {}: {} cell(s) applied",
        plan.domain,
        revision.revision,
        revision.cells.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// One audit event per cell the apply changed.
async fn audit_steps(
    bus: &cbs_host::bus::nats::NatsBus,
    nats: &NatsArgs,
    plan: &Plan,
    resolved: &[Resolved],
    revision: &cbs_host::domain::state::Revision,
) {
    let writer = nats.options("");
    let detail = format!(
        "cbs apply: domain {} revision {}",
        plan.domain, revision.revision
    );
    for step in &plan.steps {
        let action = match step.action {
            Action::Add | Action::Upgrade | Action::Scale => audit::Action::Deploy,
            Action::Remove => audit::Action::Undeploy,
            Action::Unchanged | Action::Keep => continue,
        };
        let release = revision.cells.get(&step.cell);
        // A deploy's key and proof are the bundle's own signature.
        let bundle = step.source.and_then(|i| resolved.get(i)).map(|r| &r.bundle);
        let change = audit::Change {
            action,
            cell: &step.cell,
            version: release.map(|r| r.version.as_str()),
            digest: release.map(|r| r.digest.as_str()),
            key: bundle.and_then(|b| b.signer()),
            proof: bundle.and_then(|b| b.signature()),
            from: None,
            detail: detail.clone(),
            contract: step.contract.clone(),
        };
        audit::record(bus.client(), writer.as_ref(), change).await;
    }
}

/// Each cell's bundle: read from its file, or built from its folder.
/// The spec at `path`, with each cell's bundle read or built.
pub(crate) async fn load(
    path: &Path,
    cache: Option<&Path>,
    pulls: &Pulls,
) -> anyhow::Result<(Spec, Vec<Resolved>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec = Spec::parse(&text).with_context(|| format!("in {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolved = resolve(&spec, base, cache, pulls).await?;
    Ok((spec, resolved))
}

async fn resolve(
    spec: &Spec,
    base: &Path,
    cache: Option<&Path>,
    pulls: &Pulls,
) -> anyhow::Result<Vec<Resolved>> {
    let mut out = Vec::with_capacity(spec.cells.len());
    let mut build_dir = None;
    for (i, member) in spec.cells.iter().enumerate() {
        let (bundle, bytes) = match (&member.bundle, &member.folder) {
            (Some(file), _) => read(&base.join(file))?,
            (None, Some(folder)) => {
                let dir = match &build_dir {
                    Some(dir) => dir,
                    None => build_dir.insert(tempfile::tempdir()?),
                };
                built(
                    &base.join(folder),
                    &dir.path().join(format!("{i}.cbs")),
                    cache,
                )
                .await?
            }
            (None, None) => match &member.reference {
                Some(reference) => pulled(reference, pulls).await?,
                None => anyhow::bail!("a cell without `bundle`, `folder` or `ref`"),
            },
        };
        out.push(Resolved {
            member: member.clone(),
            bundle,
            bytes,
        });
    }
    Ok(out)
}

fn read(file: &Path) -> anyhow::Result<(Bundle, Vec<u8>)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let bundle = Bundle::from_bytes(&bytes).with_context(|| format!("in {}", file.display()))?;
    Ok((bundle, bytes))
}

/// The bundle a registry reference names, pulled and verified.
async fn pulled(reference: &str, pulls: &Pulls) -> anyhow::Result<(Bundle, Vec<u8>)> {
    let reference = Reference::parse(reference)?;
    let trust = trust_of(&pulls.trust)?;
    let (pinned, bundle) = pull_verified(&pulls.registry, &reference, &trust).await?;
    eprintln!("pulled {pinned}");
    let bytes = bundle.to_bytes()?;
    Ok((bundle, bytes))
}

/// `cbs build FOLDER -o FILE`.
async fn built(
    folder: &Path,
    file: &Path,
    cache: Option<&Path>,
) -> anyhow::Result<(Bundle, Vec<u8>)> {
    let venvs = Arc::new(VenvCache::new(match cache {
        Some(dir) => dir.join("python-venvs"),
        None => VenvCache::default_dir(),
    }));
    let cache = cache
        .map(Path::to_path_buf)
        .or_else(ComponentCache::default_dir);
    // Building fills the cache with the optimized code the hosts load.
    let options = EngineOptions {
        compiler: Compiler::Optimized,
        ..EngineOptions::default()
    };
    let runtime = Arc::new(WasmRuntime::new(&options, cache)?);
    let built = crate::build::build(folder, Some(file), None, runtime, venvs)
        .await
        .with_context(|| format!("cannot build {}", folder.display()))?;
    read(&built.path)
}

fn show(plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    let what = if plan.new_domain {
        "new domain"
    } else {
        "domain"
    };
    println!(
        "{what} {}{}",
        plan.domain,
        plan.version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    for step in &plan.steps {
        let line = match step.action {
            Action::Add => format!("  + {} {}", step.cell, version(&step.version)),
            Action::Upgrade => format!(
                "  ~ {} {} -> {}",
                step.cell,
                version(&step.from),
                version(&step.version)
            ),
            Action::Scale => format!("  ~ {} {} (placement)", step.cell, version(&step.version)),
            Action::Unchanged => format!("    {} {}", step.cell, version(&step.version)),
            Action::Remove => format!("  - {} {}", step.cell, version(&step.from)),
            Action::Keep => format!(
                "  ? {} {} (not in the spec; --prune removes it)",
                step.cell,
                version(&step.from)
            ),
        };
        let verdict = step
            .contract
            .as_ref()
            .map(|c| {
                format!(
                    " [contract: {}]",
                    serde_json::to_value(c.verdict)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        println!("{line}{verdict}");
    }
    if plan.boundary_changed {
        println!("  ~ exports, uses or version");
    }
    println!(
        "{}",
        if plan.is_noop() {
            "no changes".to_owned()
        } else {
            plan.summary()
        }
    );
    Ok(())
}

fn version(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}
