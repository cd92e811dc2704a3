//! Helpers shared by `hookfleet-bench` and `hookfleet-soak`: a TCP proxy that
//! cuts connections, a tiny real git repository, and `hookfleet worker`
//! processes (spawn, readiness, RSS, SIGKILL). Never used by the library.
#![allow(dead_code)]

pub mod procs;
/// The test kit's fault-injecting proxy: one copy for tests and benches.
#[path = "../../tests/common/proxy.rs"]
pub mod proxy;
pub mod repo;
