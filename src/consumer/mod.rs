//! Consuming: the supervisor (connection lifecycle), each consumer's loop, the
//! task pool (limits), per-delivery processing, the outcome rules it applies,
//! and coalesced acks.

pub mod acker;
mod consume_loop;
pub mod outcome;
pub mod pool;
pub mod process;
pub mod supervisor;

pub use process::DeliveryCtx;
pub use supervisor::Supervisor;
