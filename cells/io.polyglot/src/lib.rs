//! `io.polyglot`: the edge of the polyglot flow (`make run-polyglot`).
//! Rust hands a list of numbers to `logic.describe` (Python, a component),
//! which asks `logic.stats` (Python with numpy, the native pool); the
//! description comes back here, goes to `text.headline` (a sidecar
//! process), then to `logic.shout` (a Dart sidecar) where it is served
//! (built by `make dart-cells`, where `dart` exists), and the headline is
//! printed (this cell is granted stdio).

use std::io::Write;

use cbs_cell::{Cell, CellError, Context, ErrorCode};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Numbers {
    numbers: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct Described {
    summary: String,
    #[serde(default)]
    headline: String,
    stats: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Headline {
    headline: String,
}

struct Polyglot;

impl Cell for Polyglot {
    const ID: &'static str = "io.polyglot";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const INPUT_SCHEMA: Option<&'static str> = Some("io.polyglot/numbers@1");
    const OUTPUT_SCHEMA: Option<&'static str> = Some("io.polyglot/described@1");
    type Input = Numbers;
    type Output = Described;

    fn handle(input: Numbers, ctx: &Context) -> Result<Described, CellError> {
        ctx.info(&format!(
            "describing {} numbers in Python",
            input.numbers.len()
        ));
        let mut described: Described = ctx.request("logic.describe", &input)?;
        let sentence = serde_json::json!({ "text": described.summary });
        let headline: Headline = ctx.request("text.headline", &sentence)?;
        described.headline = shouted(ctx, headline.headline)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", described.headline)
            .and_then(|()| out.flush())
            .map_err(|e| CellError::unavailable(format!("cannot write stdout: {e}")))?;
        Ok(described)
    }
}

/// The headline as the Dart cell `logic.shout` shouts it, or as it is
/// where no host serves that cell.
fn shouted(ctx: &Context, headline: String) -> Result<String, CellError> {
    let text = serde_json::json!({ "text": headline });
    match ctx.request::<_, Shouted>("logic.shout", &text) {
        Ok(shouted) => Ok(shouted.text),
        Err(e) if e.code == ErrorCode::NotFound => Ok(headline),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
struct Shouted {
    text: String,
}

cbs_cell::export_cell!(Polyglot);
