//! `io.prompt_name`: the edge of the greeting flow. Reads a name from stdin
//! (it is granted stdio), asks `logic.greet` for a greeting and hands it to
//! `io.print_greeting` — only through the bus.

use cbs_cell::{Cell, CellError, Context};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Start {}

#[derive(Serialize, Deserialize)]
pub struct Greeting {
    greeting: String,
}

#[derive(Serialize)]
struct Name<'a> {
    name: &'a str,
}

#[derive(Deserialize)]
struct Printed {}

struct PromptName;

impl Cell for PromptName {
    const ID: &'static str = "io.prompt_name";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const INPUT_SCHEMA: Option<&'static str> = Some("io.prompt_name/start@1");
    const OUTPUT_SCHEMA: Option<&'static str> = Some("io.prompt_name/done@1");
    type Input = Start;
    type Output = Greeting;

    fn handle(_start: Start, ctx: &Context) -> Result<Greeting, CellError> {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CellError::unavailable(format!("cannot read stdin: {e}")))?;
        let name = line.trim();
        if name.is_empty() {
            return Err(CellError::invalid_input(
                "no name on stdin: pipe one in, e.g. `echo Ada | make run`",
            ));
        }
        ctx.info(&format!("read a name of {} bytes", name.len()));
        let greeting: Greeting = ctx.request("logic.greet", &Name { name })?;
        let _: Printed = ctx.request("io.print_greeting", &greeting)?;
        Ok(greeting)
    }
}

cbs_cell::export_cell!(PromptName);
