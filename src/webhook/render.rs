//! The bytes and headers a receiver gets for one delivery.
//!
//! Owns the request a delivery becomes: the body (rendered from the event the
//! push wrote, stored once in `webhook_deliveries`) and the headers that go with
//! it, including the signature. Pure: no I/O, no clock except what the caller
//! passes, so a retry of the same delivery renders the same body.

use super::github::{self, Site};
use super::storage::DeliveryRow;

/// The JSON body of `delivery`: GitHub's exact body for its event, rendered
/// from the stored event payload and the host's URLs (see [`github`]).
pub fn body(delivery: &DeliveryRow, site: &Site) -> Vec<u8> {
    let body = github::body(&delivery.event_type, &delivery.payload, site);
    // Serialising a JSON value to bytes cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}
