//! OpenTelemetry: one distributed trace per push, from the hook to the webhook
//! receiver (see docs/ARCHITECTURE.md, "Tracing").
//!
//! Owns export ([`export`]) and W3C context propagation ([`propagate`]); span
//! names and attributes follow the OpenTelemetry messaging conventions and are
//! written where the work happens (hook, consumer, push statement, relay,
//! webhook delivery) with the helpers of [`span`]. Off by default: with no
//! exporter installed, spans carry no OpenTelemetry context and nothing is
//! propagated.

pub(crate) mod export;
pub(crate) mod propagate;
pub(crate) mod span;

pub use export::{Exporter, Settings};
