//! The way in over HTTP: cells declare routes (`[[http]]` in `cell.toml`),
//! and a server — in a host (`cbs-host run --http`) or a gateway for the
//! whole lattice (`cbs gateway`) — maps each request to one envelope for
//! the route's cell, answers with its reply or an RFC 9457 problem, and
//! publishes an OpenAPI 3.1 document generated from the cells' contracts.
//!
//! [`route`] (routes and their table), [`request`] (HTTP request →
//! payload), [`problem`] (`BusError` → status and problem body),
//! [`openapi`] (the document), [`auth`] (bearer tokens and JWTs),
//! [`trace`] (W3C trace context at the edge), [`server`] (the server),
//! [`listen`] (connections: how many, how long without a request).

pub mod auth;
pub mod listen;
pub mod oidc;
pub mod openapi;
pub mod problem;
pub mod request;
pub mod route;
pub mod server;
pub mod serving;
pub mod trace;

pub use route::{HttpRoute, Target};
pub use server::{Gateway, HttpConfig};
pub use serving::Serving;
