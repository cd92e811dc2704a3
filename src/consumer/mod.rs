//! Consuming: the supervisor (connection lifecycle), each consumer's loop, the
//! task pool (limits), per-delivery processing, the outcome rules it applies,
//! and coalesced acks.

pub(crate) mod acker;
mod consume_loop;
pub(crate) mod outcome;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod supervisor;

pub(crate) use process::DeliveryCtx;
pub(crate) use supervisor::Supervisor;
