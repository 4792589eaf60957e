//! `cbs-host`: runs CBS cells (WebAssembly components) and bridges their
//! envelopes to a bus — in process by default, NATS across machines.
//!
//! One module per concept: [`envelope`] (the wire format and `BusError`),
//! [`bus`] (the `BodyBus` trait and its implementations), [`manifest`]
//! (`cell.toml`), [`contract`] (JSON Schema), [`runtime`] (wasm),
//! [`outbound`] (calls between cells), [`body`] (serving cells) and
//! [`telemetry`] (logs and spans); [`discovery`] lists hosts and cells over
//! NATS, [`loadgen`] drives benchmarks, and [`cli`] holds flags both
//! binaries share.

pub mod body;
pub mod build;
pub mod bundle;
pub mod bus;
pub mod chaos;
pub mod cli;
pub mod contract;
pub mod deploy;
pub mod discovery;
pub mod envelope;
pub mod loadgen;
pub mod manifest;
pub mod metrics;
pub mod outbound;
pub mod resilience;
pub mod runtime;
pub mod scaffold;
pub mod telemetry;
