//! imgate: a gateway in front of IM vendor REST APIs (Agora Chat / 声网 IM and Easemob / 环信).
//!
//! Layout:
//! - [`cli`]: the command line (`serve`, `demo`, `emulator`, `check-config`, `token`).
//! - [`gateway`]: the shared state: configuration snapshot, apps and their quotas, metrics.
//! - [`pipeline`]: the request path, phase by phase (classify → authenticate → … → respond).
//! - [`route`]: method + path → app, [`route::Endpoint`] and path parameters.
//! - [`vendor`]: what differs between and is known about the vendors: kinds, error bodies, quotas.
//! - [`config`]: TOML → validated settings; secrets from `${ENV}` or `file:`.
//! - [`auth`]: caller identity from client keys.
//! - [`cache`]: the read cache (moka): coalescing, stale serving, presence per user, effects.
//! - [`forward`]: one vendor call with the app token, 401 renewal and replay, and its metrics.
//! - [`upstream`]: the pooled vendor client and the forwarding header rules.
//! - [`error`]: every gateway error and its one mapping to a vendor-shaped response.
//! - [`metrics`]: the Prometheus metrics, on a registry passed in.
//! - [`shards`]: per-thread copies of what every request counts, summed when read.
//! - [`logging`]: the non-blocking log writer (access log included), its dropped-lines count,
//!   and JSON lines whose list fields are arrays.
//! - [`trace`]: W3C trace context carried on to the vendor and into the access log.
//! - [`token`]: app tokens (Agora AccessToken2 minted locally, Easemob client credentials).
//! - [`server`]: the accept loop shared by every listener, with connection guards, and [`run`],
//!   the one entry point of `main` and the tests.
//! - [`cluster`]: several replicas on one Redis: shared quotas, membership, degraded mode.
//! - [`status`]: the status page on the admin listener (`/` and `/status.json`).
//! - [`tls`]: rustls for HTTPS listeners and the roots trusted toward the vendor.
//! - [`emulator`]: a faithful in-memory fake of the vendor API for tests, demos and benchmarks.
//! - [`demo`]: the demo identities and the one-process demo.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn_threads;
pub mod demo;
pub mod emulator;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod route;
pub mod server;
pub mod shards;
pub mod status;
pub mod tls;
pub mod token;
pub mod trace;
pub mod upstream;
pub mod vendor;

pub use gateway::Gateway;
pub use server::{run, Listeners};
