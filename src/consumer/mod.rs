//! Consuming: the supervisor (connection lifecycle), the task pool (limits),
//! per-delivery processing, the outcome rules it applies, and coalesced acks.

pub mod acker;
pub mod outcome;
pub mod pool;
pub mod process;
pub mod supervisor;

pub use process::Ctx;
pub use supervisor::Supervisor;
