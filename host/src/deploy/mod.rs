//! Deployments over NATS JetStream (docs/adr/0008-bundles-and-deploy.md):
//!
//! - bucket `cbs-bundles` (object store): bundles, named by digest;
//! - bucket `cbs-desired` (key-value): cell id → the release every host
//!   should serve, with the releases before it (for `cbs rollback`);
//! - bucket `cbs-status` (key-value): `<cell>/<host>` → what that host
//!   serves, or why it could not load the desired release.
//!
//! - bucket `cbs-hosts` (key-value): each watching host's heartbeat (labels,
//!   memory it offers);
//! - bucket `cbs-placement` (key-value): cell → the hosts that serve it,
//!   for cells deployed with `--replicas` ([`placer`], [`placement`]);
//! - bucket `cbs-placer` (key-value): the lease of the one host that
//!   places;
//! - bucket `cbs-served` (key-value): cell → the release hosts last
//!   installed of it, kept past undeploy for downgrade protection
//!   ([`served`]);
//! - bucket `cbs-expects` (key-value): deployed cell → its consumer
//!   expectations of the cells it calls, checked against their new
//!   releases ([`rollout`]).
//!
//! `cbs deploy` (the rollout in `host/cli`) writes the first two and waits
//! on the third; hosts run with `--watch` follow the second and the
//! placement ([`watcher`]), write the third, and take turns placing.
//!
//! The records are `desired` ([`Release`], [`Desired`], [`Status`]); the
//! buckets that hold them are `store` ([`Store`]).

pub mod blue_green;
pub mod canary;
pub mod deps;
pub mod downgrade;
pub mod placement;
pub mod placer;
pub mod policy_gate;
pub mod rollout;
pub mod served;
pub mod watcher;

mod desired;
mod store;

pub use desired::{Autoscale, Canary, CanaryNote, Desired, Release, RequestLoad, State, Status};
pub use store::{status_key, Expectations, Store};

use std::time::Duration;

pub const BUNDLES: &str = "cbs-bundles";
pub const DESIRED: &str = "cbs-desired";
pub const STATUS: &str = "cbs-status";
/// Watching hosts' heartbeats: host → [`placement::HostInfo`].
pub const HOSTS: &str = "cbs-hosts";
/// Cell → [`placement::Placement`], written by the placer.
pub const PLACEMENT: &str = "cbs-placement";
/// The placer's lease: which host places, renewed while it lives.
pub const PLACER: &str = "cbs-placer";
/// Cell → the release hosts last installed ([`downgrade::Served`]).
pub const SERVED: &str = "cbs-served";
/// Deployed cell → what it relies on from the cells it calls
/// ([`Expectations`]): what a callee's new release is checked against.
pub const EXPECTS: &str = "cbs-expects";

/// How long `cbs deploy` waits for hosts by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
