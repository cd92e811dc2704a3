//! PostgreSQL pool and migrations.
//!
//! Owns how connections are made: bounded pool, acquire/idle/lifetime limits, a
//! server-side `statement_timeout` on every connection, and a connect deadline so a
//! dead database gives a clear error instead of a hang. TLS follows `sslmode` in the URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::config::DatabaseConfig;

/// The embedded migrations in `migrations/`.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Database errors at the boundary, with the (redacted) address named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL does not parse.
    #[error("database.url is invalid ({url}): {source}")]
    Url {
        /// Redacted URL.
        url: String,
        /// Parser error.
        source: sqlx::Error,
    },
    /// No connection within the deadline.
    #[error("cannot connect to PostgreSQL at {address} within {timeout:?}")]
    ConnectTimeout {
        /// host:port.
        address: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The connection failed.
    #[error("cannot connect to PostgreSQL at {address}: {source}")]
    Connect {
        /// host:port.
        address: String,
        /// Driver error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other query error.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Connection options from config: URL, statement timeout, application name.
pub(crate) fn connect_options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let opts = PgConnectOptions::from_str(cfg.url.expose()).map_err(|source| DbError::Url {
        url: cfg.url.redacted(),
        source,
    })?;
    let statement_ms = cfg.statement_timeout.as_millis().to_string();
    Ok(opts
        .application_name("hookfleet")
        .options([("statement_timeout", statement_ms.as_str())])
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// A pooled connection idle for at least this long is pinged before it is
/// handed out; one used more recently is handed out as it is.
///
/// Why not sqlx's default (`test_before_acquire`: ping on every acquire): sqlx
/// already pings every connection when it is released, so a connection that
/// just came back is known to be alive, and a second ping on the next acquire
/// is one more round trip per job (worker CPU per push in the end-to-end bench
/// 1.07–1.40 ms with it, 0.99–1.00 ms without). A connection that sat idle may have been cut meanwhile
/// (database restart, failover, a firewall's idle timeout): that one is pinged
/// and replaced if dead. A connection cut in the moment between release and
/// reuse fails its job's statement instead, which is a transient error: the job
/// is retried and the dead connection is dropped on release.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The bounded pool, without connecting yet (connections open on first use).
pub fn lazy_pool(cfg: &DatabaseConfig) -> Result<PgPool, DbError> {
    let opts = connect_options(cfg)?;
    Ok(PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .min_connections(cfg.min_connections)
        .acquire_timeout(cfg.acquire_timeout)
        .idle_timeout(Some(cfg.idle_timeout))
        .max_lifetime(Some(cfg.max_lifetime))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_AFTER_IDLE {
                    return Ok(true);
                }
                // An error closes the connection and the pool opens another.
                sqlx::Connection::ping(conn).await.map(|()| true)
            })
        })
        .connect_lazy_with(opts))
}

/// Opens the pool and checks one connection within `connect_timeout`.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, DbError> {
    let pool = lazy_pool(cfg)?;
    check(cfg, &pool).await?;
    Ok(pool)
}

/// Checks that `pool` can hand out a connection within `connect_timeout`.
pub(crate) async fn check(cfg: &DatabaseConfig, pool: &PgPool) -> Result<(), DbError> {
    let address = cfg.url.address();
    match tokio::time::timeout(cfg.connect_timeout, pool.acquire()).await {
        Ok(Ok(conn)) => drop(conn),
        Ok(Err(source)) => return Err(DbError::Connect { address, source }),
        Err(_) => {
            return Err(DbError::ConnectTimeout {
                address,
                timeout: cfg.connect_timeout,
            });
        }
    }
    Ok(())
}

/// Why the database did not answer a [`ping`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PingError {
    /// The query failed (no connection within the pool's acquire timeout, or the
    /// server answered with an error).
    #[error("{0}")]
    Query(#[from] sqlx::Error),
    /// No answer within the caller's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Whether the database answers: one trivial statement through `pool`, bounded by
/// `timeout`. Every liveness or readiness probe of the database (`/readyz`, the
/// worker's database watch, the kill switch's probe) asks this one, so they all
/// mean the same thing by "answering".
pub(crate) async fn ping(pool: &PgPool, timeout: Duration) -> Result<(), PingError> {
    match tokio::time::timeout(timeout, sqlx::query_scalar!("SELECT 1").fetch_one(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(PingError::Query(e)),
        Err(_) => Err(PingError::Timeout(timeout)),
    }
}

/// Creates the configured database if it does not exist (dev convenience: the
/// defaults name a `hookfleet` database that a fresh PostgreSQL lacks).
pub(crate) async fn ensure_database(cfg: &DatabaseConfig) -> Result<(), DbError> {
    let opts = connect_options(cfg)?;
    let Some(name) = opts.get_database().map(str::to_string) else {
        return Ok(());
    };
    let address = cfg.url.address();
    let admin = opts.clone().database("postgres");
    let work = async {
        let mut conn = sqlx::PgConnection::connect_with(&admin).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&format!("CREATE DATABASE {quoted}"))
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::info!(database = %name, "created database"),
                // Another process created it at the same moment.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e),
            }
        }
        conn.close().await
    };
    match tokio::time::timeout(cfg.connect_timeout, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(DbError::Connect { address, source }),
        Err(_) => Err(DbError::ConnectTimeout {
            address,
            timeout: cfg.connect_timeout,
        }),
    }
}

/// Applies pending migrations; a no-op when all are applied. Concurrent runners are
/// serialised by sqlx's own advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
