//! `cbs contract test`: generated inputs sent to a cell, each reply
//! checked against its contract.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bundle::Bundle;
use cbs_host::bus::BodyBus;
use cbs_host::contract::cases::{self, Case};
use cbs_host::contract::testing::{Outcome, Target};
use cbs_host::deploy::Store;
use cbs_host::host::Host;
use cbs_host::manifest::{CellSpec, SchemaRef};
use clap::Args;
use serde_json::Value;

use crate::args::{EngineArgs, NatsArgs};

#[derive(Args)]
pub struct TestArgs {
    /// A cell folder or bundle; with --nats also a deployed cell's id.
    cell: String,
    /// The generator's seed: the same seed sends the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long each call may take, in ms.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    timeout_ms: u64,
    /// Print the results as JSON (one object per case).
    #[arg(long)]
    json: bool,
    /// Print every case, not only the failures and the summary.
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

/// The cell's id and its input and output schemas.
struct Contract {
    cell: String,
    input: Value,
    output: Option<Value>,
}

pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.cell);
    let local = path.exists();
    let timeout = Duration::from_millis(args.timeout_ms);
    let outcomes = if args.nats.url.is_some() {
        let bus = args.nats.connect_client().await?;
        let contract = if local {
            contract_of_path(&path)?
        } else {
            contract_of_deployed(&bus, &args.cell).await?
        };
        test(&bus, &contract, args.seed, timeout).await?
    } else if local {
        let contract = contract_of_path(&path)?;
        let host = Host::builder()
            .runtime(args.engine.runtime()?)
            .sources(args.engine.sources(&[], true)?)
            .cell(&path)
            .start()
            .await
            .with_context(|| format!("cannot serve {} here", path.display()))?;
        let bus: Arc<dyn BodyBus> = host.body().bus().clone();
        let outcomes = test(bus.as_ref(), &contract, args.seed, timeout).await;
        host.shutdown(Duration::from_secs(5)).await;
        outcomes?
    } else {
        anyhow::bail!(
            "{} is neither a cell folder nor a bundle; to test a deployed cell by its id, give --nats URL",
            args.cell
        );
    };
    print(&outcomes, args.json, args.verbose, args.seed)?;
    Ok(if outcomes.iter().all(|o| o.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn test(
    bus: &dyn BodyBus,
    contract: &Contract,
    seed: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<Outcome>> {
    let generated: Vec<Case> = cases::generate(&contract.input, seed)?;
    eprintln!(
        "testing {} with {} generated input(s) (seed {seed})",
        contract.cell,
        generated.len()
    );
    let target = Target {
        bus,
        cell: &contract.cell,
        timeout,
    };
    Ok(target.run(generated, contract.output.as_ref()).await)
}

fn contract_of_path(path: &std::path::Path) -> anyhow::Result<Contract> {
    let (cell, (input, output)) = if path.is_dir() {
        let spec = CellSpec::from_dir(path)?;
        let read = |r: &Option<SchemaRef>| -> anyhow::Result<Option<Value>> {
            let Some(r) = r else { return Ok(None) };
            let file = spec.resolve(&r.schema);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not JSON", file.display())
            })?))
        };
        let schemas = (read(&spec.manifest.input)?, read(&spec.manifest.output)?);
        (spec.manifest.id.clone(), schemas)
    } else {
        let bundle = Bundle::read(path)?;
        (bundle.manifest.cell.clone(), bundle.schemas()?)
    };
    Ok(Contract {
        input: input.with_context(|| {
            format!("{cell} declares no input schema: nothing to generate inputs from")
        })?,
        cell,
        output,
    })
}

/// The contract of the release of `cell` deployed in the lattice.
async fn contract_of_deployed(
    bus: &cbs_host::bus::nats::NatsBus,
    cell: &str,
) -> anyhow::Result<Contract> {
    cbs_host::manifest::check_cell_id(cell)?;
    let store = Store::open(bus.client()).await?;
    let desired = store.desired(cell).await?.with_context(|| {
        format!("{cell} is not deployed: give its folder or bundle for the contract")
    })?;
    let (input, output) = store.get_bundle(&desired.current).await?.schemas()?;
    Ok(Contract {
        cell: cell.to_owned(),
        input: input.with_context(|| format!("{cell} declares no input schema"))?,
        output,
    })
}

fn print(outcomes: &[Outcome], json: bool, verbose: bool, seed: u64) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcomes)?);
        return Ok(());
    }
    for o in outcomes.iter().filter(|o| verbose || !o.passed) {
        let mark = if o.passed { "ok  " } else { "FAIL" };
        println!("{mark} {:<7} {}: {}", o.kind, o.label, shortened(&o.detail));
        if !o.passed {
            println!("       input: {}", o.input);
            if let Some(small) = &o.shrunk {
                println!("       shrunk to: {small}");
            }
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!(
        "{} case(s): {} passed, {failed} failed (seed {seed})",
        outcomes.len(),
        outcomes.len() - failed
    );
    Ok(())
}

/// A line's detail, cut to a screen's width (`--json` has it whole).
fn shortened(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
