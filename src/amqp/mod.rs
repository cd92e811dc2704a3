//! RabbitMQ: connecting, topology, publishing, and the consuming supervisor.

pub mod connect;

pub use connect::{AmqpError, connect};
