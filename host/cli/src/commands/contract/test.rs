//! `cbs contract test`: generated inputs sent to a cell, each reply
//! checked against its contract.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bundle::Bundle;
use cbs_host::bus::BodyBus;
use cbs_host::contract::cases::{self, Case};
use cbs_host::contract::expectations;
use cbs_host::contract::testing::{Outcome, Target};
use cbs_host::deploy::{Expectations, Store};
use cbs_host::host::Host;
use cbs_host::manifest::expects::Expectation;
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
    /// Also check what this consumer (a cell folder or bundle) expects of
    /// CELL ([[expects."CELL"]] in its cell.toml); repeatable. With --nats
    /// the expectations of every deployed consumer are checked too.
    #[arg(long, value_name = "PATH")]
    consumer: Vec<PathBuf>,
    /// With --nats: test the version of CELL on trial (a canary, or a
    /// blue-green release before its switch) on its own subject
    /// cbs.~p.CELL, instead of the cell's traffic.
    #[arg(long, requires = "url")]
    trial: bool,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

/// The cell's id, its input and output schemas, and what it expects of
/// the cells it calls.
struct Contract {
    cell: String,
    input: Option<Value>,
    output: Option<Value>,
    expects: BTreeMap<String, Vec<Expectation>>,
}

pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.cell);
    let local = path.exists();
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut consumers = args
        .consumer
        .iter()
        .map(|p| Ok(expectations_of(&contract_of_path(p)?)))
        .collect::<anyhow::Result<Vec<Expectations>>>()?;
    let outcomes = if args.nats.url.is_some() {
        let bus = args.nats.connect_client().await?;
        let contract = if local {
            contract_of_path(&path)?
        } else {
            contract_of_deployed(&bus, &args.cell).await?
        };
        let store = Store::open(bus.client()).await?;
        consumers.extend(store.all_expectations().await?);
        let on = On {
            bus: &bus,
            timeout,
            trial: args.trial,
        };
        let mut outcomes = test(&on, &contract, args.seed).await?;
        outcomes.extend(consumed(&on, &contract.cell, &consumers).await);
        // What the cell itself expects, of the cells the lattice serves.
        for (callee, list) in &contract.expects {
            let own = expectations_of(&contract);
            let target = Target {
                bus: &bus,
                cell: callee,
                timeout,
                trial: false,
            };
            outcomes.push(expected(&own, callee, list, &target).await);
        }
        outcomes
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
        let on = On {
            bus: bus.as_ref(),
            timeout,
            trial: false,
        };
        let outcomes = test(&on, &contract, args.seed).await;
        let more = consumed(&on, &contract.cell, &consumers).await;
        host.shutdown(Duration::from_secs(5)).await;
        let mut outcomes = outcomes?;
        outcomes.extend(more);
        outcomes
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

/// Where the tests go: a bus, how long a call may take, and whether to
/// the version on trial.
struct On<'a> {
    bus: &'a dyn BodyBus,
    timeout: Duration,
    trial: bool,
}

impl<'a> On<'a> {
    fn target(&self, cell: &'a str) -> Target<'a> {
        Target {
            bus: self.bus,
            cell,
            timeout: self.timeout,
            trial: self.trial,
        }
    }
}

async fn test(on: &On<'_>, contract: &Contract, seed: u64) -> anyhow::Result<Vec<Outcome>> {
    let input = contract.input.as_ref().with_context(|| {
        format!(
            "{} declares no input schema: nothing to generate inputs from",
            contract.cell
        )
    })?;
    let generated: Vec<Case> = cases::generate(input, seed)?;
    eprintln!(
        "testing {} with {} generated input(s) (seed {seed})",
        contract.cell,
        generated.len()
    );
    let target = on.target(&contract.cell);
    Ok(target.run(generated, contract.output.as_ref()).await)
}

/// Each consumer's expectations of `cell`, checked against it on `bus`.
async fn consumed(on: &On<'_>, cell: &str, consumers: &[Expectations]) -> Vec<Outcome> {
    let target = on.target(cell);
    let mut outcomes = Vec::new();
    for consumer in consumers.iter().filter(|c| c.consumer != cell) {
        if let Some(list) = consumer.expects.get(cell) {
            outcomes.push(expected(consumer, cell, list, &target).await);
        }
    }
    outcomes
}

/// One consumer's expectations of `callee`, as one outcome.
async fn expected(
    consumer: &Expectations,
    callee: &str,
    list: &[Expectation],
    target: &Target<'_>,
) -> Outcome {
    let broken = expectations::check(target, &consumer.consumer, list).await;
    let detail = if broken.is_empty() {
        format!("{} example(s) answered, with every field read", list.len())
    } else {
        let lines: Vec<String> = broken.iter().map(ToString::to_string).collect();
        lines.join("; ")
    };
    Outcome {
        label: format!("{} expects {callee}", consumer.consumer),
        kind: "expects",
        input: serde_json::to_value(list).unwrap_or_default(),
        passed: broken.is_empty(),
        detail,
        shrunk: None,
    }
}

fn expectations_of(contract: &Contract) -> Expectations {
    Expectations {
        consumer: contract.cell.clone(),
        version: String::new(),
        expects: contract.expects.clone(),
    }
}

fn contract_of_path(path: &std::path::Path) -> anyhow::Result<Contract> {
    let (manifest, (input, output)) = if path.is_dir() {
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
        (spec.manifest.clone(), schemas)
    } else {
        let bundle = Bundle::read(path)?;
        (bundle.cell_manifest()?, bundle.schemas()?)
    };
    let (cell, expects) = (manifest.id, manifest.expects);
    Ok(Contract {
        expects,
        input,
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
    let bundle = store.get_bundle(&desired.current).await?;
    let (input, output) = bundle.schemas()?;
    Ok(Contract {
        expects: bundle.cell_manifest()?.expects,
        cell: cell.to_owned(),
        input,
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
