//! The inbox: claiming a message id before a handler's effects (in the
//! handler's transaction, so a redelivery finds it taken) and asking whether one
//! was handled. [`crate::inbox`] decides when; the push writer folds the claim
//! into its own statement ([`inbox_claim_sql`]).

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The inbox claim's INSERT with the message id at `$first` and the queue at
/// `$first + 1`. It returns one row when the message is new and none when the
/// inbox has it, so a writer can fold it into its own statement as a CTE and make
/// every write read from it (`push::record`). The same statement as
/// [`claim_message`]'s (a unit test holds them equal).
pub(crate) fn inbox_claim_sql(first: usize) -> String {
    format!(
        "INSERT INTO inbox (message_id, queue) VALUES (${first}, ${}) \
         ON CONFLICT DO NOTHING RETURNING 1",
        first + 1
    )
}

/// Claims `message_id` for `queue` in the inbox, in `tx`; `false` when it was
/// handled before (a concurrent redelivery waits on the first one's row lock and
/// then sees it).
pub(crate) async fn claim_message(
    tx: &mut Transaction<'static, Postgres>,
    message_id: Uuid,
    queue: &str,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        "INSERT INTO inbox (message_id, queue) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING RETURNING 1",
        message_id,
        queue,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(claimed.len() == 1)
}

/// Whether the inbox has `message_id` (handled before, by any queue).
pub(crate) async fn message_handled(pool: &PgPool, message_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM inbox WHERE message_id = $1) AS \"handled!\"",
        message_id,
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`claim_message`] runs the literal of `inbox_claim_sql(1)` (`query!`
    /// needs a literal): the two must not drift apart.
    #[test]
    fn inbox_claim_fragment_is_the_checked_statement() {
        assert_eq!(
            inbox_claim_sql(1),
            "INSERT INTO inbox (message_id, queue) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING 1"
        );
    }
}
