//! RabbitMQ: connecting (one round over the cluster's nodes), topology, confirmed
//! publishing and queue-depth sampling. The consuming supervisor lives in
//! [`crate::consumer`].
//!
//! Publishing is two modules: [`publish`] holds the functions of a confirmed
//! publish on a channel the caller owns (every publish goes through them);
//! [`publisher_pool`] holds [`Publisher`](publisher_pool::Publisher), the
//! consumer's own reconnecting connection and pool of confirm channels built
//! on them.

pub mod connect;
pub(crate) mod depths;
pub mod publish;
pub(crate) mod publisher_pool;
pub mod topology;

pub use connect::{
    AmqpError, close, connect, connect_within, node_failed, node_in_use, nodes_in_use,
};
