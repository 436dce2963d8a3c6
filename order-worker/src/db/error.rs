//! What a database operation fails with, and which failures a retry may cure.

/// Everything a database operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database or the driver failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A caller-supplied argument is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The thing exists already.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A sale's units left changed under a batch that held its lock (must not happen; the
    /// batch is rolled back and retried).
    #[error("sale {0}: units left changed under the batch")]
    Raced(u64),
}

impl DbError {
    /// Whether retrying the same operation later may succeed: connection and pool trouble,
    /// lock timeouts, serialization failures and deadlocks, and unique-key races between
    /// workers (the retry finds the winner's outcome).
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sql(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(d) => {
                    let code = d.code().unwrap_or_default();
                    let code = code.as_ref();
                    // PostgreSQL: connection exceptions (08), transaction rollbacks such as
                    // serialization failures and deadlocks (40), insufficient resources
                    // (53), operator intervention such as a shutdown or a restart (57P),
                    // lock not available, and unique violations (a race between workers:
                    // the retry finds the winner's outcome).
                    let pg = code.starts_with("08")
                        || code.starts_with("40")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "55P03"
                        || code == "23505";
                    // SQLite (numeric, extended codes included): busy, locked, I/O error,
                    // disk full (primary codes 5, 6, 10, 13), unique and primary-key
                    // violations (2067, 1555).
                    let sqlite = code.parse::<u32>().is_ok_and(|n| {
                        matches!(n & 0xff, 5 | 6 | 10 | 13) || n == 2067 || n == 1555
                    });
                    if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .is_some()
                    {
                        pg
                    } else {
                        sqlite
                    }
                }
                _ => false,
            },
            DbError::Raced(_) => true,
            _ => false,
        }
    }
}

/// Result with [`DbError`].
pub type DbResult<T> = Result<T, DbError>;
