//! `cbs show`: one cell in a registry, its contract summarized.

use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::manifest::Manifest;
use cbs_host::registry::{self, oci, Reference};
use clap::Args;
use serde_json::Value;

use crate::args::RegistryArgs;

/// Show a cell in an OCI registry: its version, runtime, digest, signer,
/// the cells it calls and its contract (input and output schemas
/// summarized), and the versions the repository has. Reads the cell's
/// manifest and schemas, not its component.
///
/// Example: `cbs show localhost:5000/cells/logic.greet --insecure`
#[derive(Args)]
pub struct ShowArgs {
    /// HOST[:PORT]/REPOSITORY[:TAG|@DIGEST] [default tag: the highest version].
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let client = args.registry.client(&reference.registry).await?;
    let found = registry::fetch(&client, &reference, false)
        .await
        .with_context(|| format!("cannot read {reference}"))?;
    let text = found
        .files
        .get(cbs_host::manifest::FILE_NAME)
        .context("the cell has no cell.toml")?;
    let cell = Manifest::parse(std::str::from_utf8(text)?)?;
    let a = |k: &str| found.annotation(k).unwrap_or("-").to_owned();
    println!("{}", found.reference);
    println!("  cell      {} {}", cell.id, cell.version);
    println!("  runtime   {}", cell.runtime);
    println!("  bundle    {}", a(oci::BUNDLE_DIGEST));
    println!("  created   {}", a(oci::CREATED));
    if let Some(source) = found.annotation(oci::SOURCE) {
        println!("  source    {source}");
    }
    println!(
        "  signer    {}",
        found.annotation(oci::SIGNER).unwrap_or("unsigned")
    );
    for (side, schema) in [("input", &cell.input), ("output", &cell.output)] {
        match schema {
            Some(s) => {
                let path = s.schema.to_string_lossy().replace('\\', "/");
                let summary = found
                    .files
                    .get(&path)
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .map_or("(schema unreadable)".into(), |v| summarize(&v));
                println!("  {side:<9} {}  {summary}", s.id);
            }
            None => println!("  {side:<9} (no contract)"),
        }
    }
    if !cell.capabilities.calls.is_empty() {
        let calls = cbs_host::manifest::list_calls(&cell.capabilities.calls, ", ");
        println!("  calls     {calls}");
    }
    let versions = registry::versions(&client, &reference.repository).await?;
    let versions: Vec<String> = versions.iter().map(ToString::to_string).collect();
    println!("  versions  {}", versions.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// A schema in one line: `{name: string, lang?: string}`, `[number]`, `string`.
pub fn summarize(schema: &Value) -> String {
    summarize_at(schema, 0)
}

fn summarize_at(schema: &Value, depth: usize) -> String {
    if depth > 3 {
        return "..".into();
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("|"),
        _ if schema.get("properties").is_some() => "object".into(),
        _ => "any".into(),
    };
    match kind.as_str() {
        "object" => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return "object".into();
            };
            let fields: Vec<String> = props
                .iter()
                .map(|(name, s)| {
                    let mark = if required.contains(&name.as_str()) {
                        ""
                    } else {
                        "?"
                    };
                    format!("{name}{mark}: {}", summarize_at(s, depth + 1))
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        "array" => match schema.get("items") {
            Some(items) => format!("[{}]", summarize_at(items, depth + 1)),
            None => "array".into(),
        },
        _ => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_summarize_in_one_line() {
        let s = serde_json::json!({
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}
        });
        assert_eq!(summarize(&s), "{name: string, tags?: [string]}");
    }
}
