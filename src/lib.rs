//! imgate: a gateway in front of IM vendor REST APIs (Agora Chat / 声网 IM and Easemob / 环信).
//!
//! Layout:
//! - [`cli`]: the command line (`serve`, `demo`, `emulator`, `check-config`, `token`).
//! - [`route`]: method + path → app, [`route::Endpoint`] and path parameters.
//! - [`vendor`]: what differs between and is known about the vendors: kinds, error bodies, quotas.
//! - [`token`]: app tokens (Agora AccessToken2 minted locally, Easemob client credentials).
//! - [`server`]: the accept loop shared by every listener, with connection guards.
//! - [`emulator`]: a faithful in-memory fake of the vendor API for tests, demos and benchmarks.
//! - [`demo`]: the demo identities and the one-process demo.

#![forbid(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod emulator;
pub mod route;
pub mod server;
pub mod token;
pub mod vendor;
