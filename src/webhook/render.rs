//! The bytes and headers a receiver gets for one delivery.
//!
//! Owns the request a delivery becomes: the body (rendered from the event the
//! push wrote, stored once in `webhook_deliveries`) and the headers that go with
//! it, including the signature. Pure: no I/O, no clock except what the caller
//! passes, so a retry of the same delivery renders the same body.

use super::storage::DeliveryRow;

/// The JSON body of `delivery`: today the stored event payload as written.
pub fn body(delivery: &DeliveryRow) -> Vec<u8> {
    // Serialising a JSON value to bytes cannot fail.
    serde_json::to_vec(&delivery.payload).unwrap_or_default()
}
