//! `logic.greet`: a pure cell. `{"name": "Ada"}` → `{"greeting": "Hello, Ada!"}`.

use cbs_cell::{Cell, CellError, Context};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Request {
    name: String,
}

#[derive(Serialize)]
pub struct Reply {
    greeting: String,
}

struct Greet;

impl Cell for Greet {
    const ID: &'static str = "logic.greet";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const INPUT_SCHEMA: Option<&'static str> = Some("logic.greet/request@1");
    const OUTPUT_SCHEMA: Option<&'static str> = Some("logic.greet/reply@1");
    type Input = Request;
    type Output = Reply;

    fn handle(input: Request, _ctx: &Context) -> Result<Reply, CellError> {
        Ok(Reply {
            greeting: format!("Hello, {}!", input.name),
        })
    }
}

cbs_cell::export_cell!(Greet);
