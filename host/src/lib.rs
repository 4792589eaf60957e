//! `cbs-host`, the library: runs CBS cells (WebAssembly components, Python
//! and sidecar processes) and bridges their envelopes to a bus — in process
//! by default, NATS across machines. The command lines are in `host/cli`.
//!
//! One module per concept: [`envelope`] (the wire format) and [`error`]
//! (`BusError`); [`bus`] (the `BodyBus` trait, in process and NATS) and
//! [`call`] (one request/reply); [`manifest`] (`cell.toml`); [`contract`]
//! (JSON Schema); [`runtime`] (wasm, processes, Python); [`outbound`] (calls
//! between cells) with [`resilience`], [`backoff`] and [`chaos`]; [`body`]
//! (serving cells) with [`routing`] (around full or slow hosts); [`bundle`] and [`deploy`] (signed bundles, desired
//! state) with [`audit`] (who changed what); [`host`] (a running host built
//! by `HostBuilder`: body, metrics, HTTP routes, the lattice); [`discovery`], [`metrics`], [`telemetry`] and [`flows`] (seeing it run);
//! [`http`] (the way in over HTTP: routes, OpenAPI, problems);
//! [`console`] (the browser UI, live); [`machine`] (the load average);
//! [`random`] (jitter and seeded faults) and [`unix_time`] (timestamps).

pub mod audit;
pub mod backoff;
pub mod backup;
pub mod body;
pub mod boundary;
pub mod bundle;
pub mod bus;
pub mod call;
pub mod chaos;
pub mod compliance;
pub mod console;
pub mod contract;
pub mod deploy;
pub mod dirs;
pub mod discovery;
pub mod domain;
pub mod durable;
pub mod envelope;
pub mod error;
pub mod events;
pub mod flows;
pub mod host;
pub mod http;
pub mod machine;
pub mod majors;
pub mod manifest;
pub mod metrics;
pub mod outbound;
pub mod platform;
pub mod policy;
pub mod quota;
pub mod random;
pub mod registry;
pub mod resilience;
pub mod retention;
pub mod roles;
pub mod routing;
pub mod runtime;
pub mod saga;
pub mod shadow;
pub mod state;
pub mod stats;
pub mod subjects;
pub mod telemetry;
pub mod tls;
pub mod unix_time;
