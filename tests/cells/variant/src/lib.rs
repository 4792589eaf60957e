//! `bench.vN`: `logic.greet`'s work, one of ten variants (feature `vN`)
//! whose ids and greetings differ, so each builds into its own component.

use cbs_cell::{Cell, CellError, Context};
use serde::{Deserialize, Serialize};

macro_rules! variants {
    ($($feature:literal => $id:literal, $hello:literal;)*) => {
        $(
            #[cfg(feature = $feature)]
            const ID: &str = $id;
            #[cfg(feature = $feature)]
            const HELLO: &str = $hello;
        )*
        #[cfg(not(any($(feature = $feature),*)))]
        const ID: &str = "bench.variant";
        #[cfg(not(any($(feature = $feature),*)))]
        const HELLO: &str = "Hello";
    };
}

variants! {
    "v0" => "bench.v0", "Hello";
    "v1" => "bench.v1", "Hi";
    "v2" => "bench.v2", "Hey";
    "v3" => "bench.v3", "Greetings";
    "v4" => "bench.v4", "Welcome";
    "v5" => "bench.v5", "Good day";
    "v6" => "bench.v6", "Salutations";
    "v7" => "bench.v7", "Howdy";
    "v8" => "bench.v8", "Hello again";
    "v9" => "bench.v9", "Well met";
}

#[derive(Deserialize)]
pub struct Request {
    name: String,
}

#[derive(Serialize)]
pub struct Reply {
    greeting: String,
}

struct Variant;

impl Cell for Variant {
    const ID: &'static str = ID;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const INPUT_SCHEMA: Option<&'static str> = Some("logic.greet/request@1");
    const OUTPUT_SCHEMA: Option<&'static str> = Some("logic.greet/reply@1");
    type Input = Request;
    type Output = Reply;

    fn handle(input: Request, _ctx: &Context) -> Result<Reply, CellError> {
        Ok(Reply {
            greeting: format!("{HELLO}, {}!", input.name),
        })
    }
}

cbs_cell::export_cell!(Variant);
