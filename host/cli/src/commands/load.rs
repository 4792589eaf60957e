//! `cbs-host load`: load one cell, check it, and show what it exports and
//! needs, without serving it.

use std::path::PathBuf;
use std::process::ExitCode;

use cbs_host::body::LoadedCell;
use cbs_host::host::Host;
use cbs_host::manifest::{RuntimeKind, SchemaRef};
use clap::Args;

use crate::args::EngineArgs;

/// Load one cell, check it, and print what it exports and needs, without
/// serving it.
///
/// Example: `cbs-host load cells/logic.greet`
#[derive(Args)]
pub struct LoadArgs {
    /// A cell folder (with a cell.toml), a bundle (.cbs) or a bare
    /// component (.wasm, loaded with default limits and its describe()).
    #[arg(value_name = "CELL")]
    cell: PathBuf,
    /// Refuse bundles not signed by this key (repeatable), as `run` does.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// Let a bundle start its native process (runtime = "sidecar" or
    /// "python"), as `run --allow-process-bundles` does.
    #[arg(long)]
    allow_process_bundles: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let host = Host::builder()
        .runtime(args.engine.runtime()?)
        .sources(
            args.engine
                .sources(&args.trust, args.allow_process_bundles)?,
        )
        .start()
        .await?;
    let cell = host.body().load_path(&args.cell).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&describe_json(&cell))?);
    } else {
        print!("{}", describe_text(&cell));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_json(cell: &LoadedCell) -> serde_json::Value {
    let m = &cell.manifest;
    serde_json::json!({
        "id": m.id,
        "version": m.version,
        "runtime": m.runtime,
        "subject": m.subject(),
        "component": m.component.as_ref().map(|c| cell.spec.resolve(c)),
        "cache": cell.cache,
        "describe": cell.info(),
        "input": m.input,
        "output": m.output,
        "capabilities": m.capabilities,
        "limits": m.limits,
        "instances": m.instances,
        "durable": m.durable.as_ref().map(|d| serde_json::json!({
            "stream": d.stream_name(&m.id),
            "subjects": d.subjects_of(&m.id),
            "consumer": cbs_host::durable::consumer_name(&m.id),
            "max_deliver": d.max_deliver,
            "ack_wait_ms": d.ack_wait_ms,
            "backoff_ms": d.backoff_ms,
            "dedup_window_ms": d.dedup_window_ms,
        })),
    })
}

fn describe_text(cell: &LoadedCell) -> String {
    let m = &cell.manifest;
    let info = cell.info();
    let schema = |s: &Option<SchemaRef>| {
        s.as_ref().map_or_else(
            || "none (payloads are not checked)".to_owned(),
            |s| format!("{}  ({})", s.id, s.schema.display()),
        )
    };
    let list = |l: &[String]| {
        if l.is_empty() {
            "none".to_owned()
        } else {
            l.join(", ")
        }
    };
    let cache = cell.cache.map_or("-".into(), lower);
    let subject = m.subject();
    let component = m
        .component
        .as_ref()
        .map_or("-".into(), |c| cell.spec.resolve(c).display().to_string());
    let python = m.python.as_ref().map_or(String::new(), |py| {
        let pool = match m.runtime {
            RuntimeKind::Python => format!(
                "; {} workers × {} at once; venv {}",
                py.workers,
                py.max_concurrency,
                py.venv.display()
            ),
            _ => String::new(),
        };
        format!(
            "python        {}.{} in {}{pool}\n",
            py.module,
            py.handler,
            py.path.display()
        )
    });
    let durable = m.durable.as_ref().map_or(String::new(), |d| {
        format!(
            "durable       stream {} on {} (consumer {}); max_deliver {}, ack_wait {} ms, \
             backoff {:?} ms, dedup {} ms; dead letters to {}\n",
            d.stream_name(&m.id),
            d.subjects_of(&m.id).join(", "),
            cbs_host::durable::consumer_name(&m.id),
            d.max_deliver,
            d.ack_wait_ms,
            d.backoff_ms,
            d.dedup_window_ms,
            cbs_host::durable::dlq_subject(&m.id),
        )
    });
    let events: String = m
        .subscribe
        .iter()
        .map(|e| {
            let how = if e.durable {
                format!(
                    "durable, stream {}, consumer {}",
                    e.stream_name(),
                    e.consumer_name(&m.id)
                )
            } else {
                lower(e.delivery)
            };
            format!("subscribes    {} ({how})\n", e.subject)
        })
        .collect();
    let state = m.capabilities.state.map_or_else(String::new, |s| {
        format!(
            "state         own key-value bucket: values up to {} bytes, {} bytes in all\n",
            s.max_value_bytes, s.max_bytes
        )
    });
    format!(
        "cell          {} {} (runtime {})\n\
         component     {component} [{cache}]\n\
         {python}\
         describe()    {} {}\n\
         input         {}\n\
         output        {}\n\
         serves        {subject} (queue group {subject})\n\
         {durable}\
         {events}\
         instances     {}, retired after {} messages or any trap\n\
         limits        memory {} MiB, timeout {} ms, concurrency {}, queue {}\n\
         capabilities  stdio: {}; calls: {}; publish: {}\n\
         {state}",
        m.id,
        m.version,
        lower(m.runtime),
        info.id,
        info.version,
        schema(&m.input),
        schema(&m.output),
        lower(m.instances.policy),
        m.instances.max_messages,
        m.memory_mb(),
        m.limits.timeout_ms,
        m.limits.concurrency,
        m.limits.queue,
        if m.capabilities.stdio { "yes" } else { "no" },
        match m.capabilities.calls.as_slice() {
            [] => "none".to_owned(),
            calls => cbs_host::manifest::list_calls(calls, ", "),
        },
        list(&m.capabilities.publish),
    )
}

/// An enum's serde name (`wasm`, `pooled`, `hit`).
fn lower(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
