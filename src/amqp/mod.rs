//! RabbitMQ: connecting (one round over the cluster's nodes), topology, confirmed
//! publishing and queue-depth sampling. The consuming supervisor lives in
//! [`crate::consumer`].

pub mod connect;
pub mod depths;
pub mod publish;
pub mod publisher;
pub mod topology;

pub use connect::{
    AmqpError, close, connect, connect_within, node_failed, node_in_use, nodes_in_use,
};
