//! `io.print_greeting`: prints a greeting on stdout (it is granted stdio).

use std::io::Write;

use cbs_cell::{Cell, CellError, Context};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Greeting {
    greeting: String,
}

#[derive(Serialize)]
pub struct Printed {
    printed: bool,
}

struct PrintGreeting;

impl Cell for PrintGreeting {
    const ID: &'static str = "io.print_greeting";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const INPUT_SCHEMA: Option<&'static str> = Some("io.print_greeting/request@1");
    const OUTPUT_SCHEMA: Option<&'static str> = Some("io.print_greeting/reply@1");
    type Input = Greeting;
    type Output = Printed;

    fn handle(input: Greeting, _ctx: &Context) -> Result<Printed, CellError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", input.greeting)
            .and_then(|()| out.flush())
            .map_err(|e| CellError::unavailable(format!("cannot write stdout: {e}")))?;
        Ok(Printed { printed: true })
    }
}

cbs_cell::export_cell!(PrintGreeting);
