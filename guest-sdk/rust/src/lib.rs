//! Write CBS cells in Rust.
//!
//! A cell is a typed handler plus one export line; the SDK does the envelope
//! and error plumbing of the `cbs:cell` WIT world:
//!
//! ```text
//! use cbs_cell::{Cell, CellError, Context};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { name: String }
//! #[derive(Serialize)]
//! struct Output { greeting: String }
//!
//! struct Greet;
//! impl Cell for Greet {
//!     const ID: &'static str = "logic.greet";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     type Input = Input;
//!     type Output = Output;
//!     fn handle(input: Input, _ctx: &Context) -> Result<Output, CellError> {
//!         Ok(Output { greeting: format!("Hello, {}!", input.name) })
//!     }
//! }
//! cbs_cell::export_cell!(Greet);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: the result is a
//! WebAssembly component that `cbs-host` loads.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "cell",
        pub_export_macro: true,
        export_macro_name: "__export_cell_world",
        default_bindings_module: "cbs_cell::bindings",
        generate_all,
    });
}

mod context;
mod error;
mod state;

pub use context::{Context, Level};
pub use error::{CellError, ErrorCode};
pub use serde_json;
pub use state::State;

use bindings::cbs::cell::types as wit;

/// A cell: one typed handler and its identity.
pub trait Cell {
    /// Cell id, dotted (e.g. `logic.greet`); it must match `cell.toml`.
    const ID: &'static str;
    /// Cell version, usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Contract id of the input payload, e.g. `logic.greet/request@1`.
    const INPUT_SCHEMA: Option<&'static str> = None;
    /// Contract id of the output payload, e.g. `logic.greet/reply@1`.
    const OUTPUT_SCHEMA: Option<&'static str> = None;

    /// The request payload. The host has already validated it against the
    /// cell's input schema.
    type Input: DeserializeOwned;
    /// The reply payload; the host validates it against the output schema.
    type Output: Serialize;

    /// Handle one message.
    fn handle(input: Self::Input, ctx: &Context) -> Result<Self::Output, CellError>;
}

/// Exports a [`Cell`] implementation as the component's `cbs:cell` world.
#[macro_export]
macro_rules! export_cell {
    ($cell:ty) => {
        #[doc(hidden)]
        struct __CbsCellExport;

        impl $crate::bindings::Guest for __CbsCellExport {
            fn handle(
                msg: $crate::bindings::cbs::cell::types::Envelope,
            ) -> ::core::result::Result<
                $crate::bindings::cbs::cell::types::Outgoing,
                $crate::bindings::cbs::cell::types::CellError,
            > {
                $crate::__handle::<$cell>(msg)
            }

            fn describe() -> $crate::bindings::cbs::cell::types::CellInfo {
                $crate::__describe::<$cell>()
            }
        }

        $crate::bindings::__export_cell_world!(__CbsCellExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub fn __handle<C: Cell>(msg: wit::Envelope) -> Result<wit::Outgoing, wit::CellError> {
    let input: C::Input = serde_json::from_str(&msg.payload).map_err(|e| {
        CellError::invalid_input(format!("payload does not fit {}::Input: {e}", C::ID)).into_wit()
    })?;
    let ctx = Context::from_envelope(msg);
    let output = C::handle(input, &ctx).map_err(CellError::into_wit)?;
    let payload = serde_json::to_string(&output).map_err(|e| {
        CellError::internal(format!("reply of {} does not serialize: {e}", C::ID)).into_wit()
    })?;
    Ok(wit::Outgoing {
        payload,
        schema: C::OUTPUT_SCHEMA.map(str::to_owned),
        headers: Vec::new(),
    })
}

#[doc(hidden)]
pub fn __describe<C: Cell>() -> wit::CellInfo {
    wit::CellInfo {
        id: C::ID.to_owned(),
        version: C::VERSION.to_owned(),
        input_schema: C::INPUT_SCHEMA.map(str::to_owned),
        output_schema: C::OUTPUT_SCHEMA.map(str::to_owned),
    }
}
