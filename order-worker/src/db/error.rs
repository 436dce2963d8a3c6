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
    /// A constraint of the schema refused a change asked for on the request path
    /// ([`OrdersDb::create_sale`](super::OrdersDb::create_sale),
    /// [`OrdersDb::pay`](super::OrdersDb::pay)), whose caller is a person (an admin, a
    /// shopper), not a worker that retries: the gateway answers it with a 4xx by name. The
    /// workers' batches never return it: there a unique violation is a race between workers,
    /// [`DbError::Sql`] and transient, and the retry finds the winner's outcome.
    ///
    /// `constraint` is PostgreSQL's name of the constraint; SQLite reports no names, so
    /// there it is what its message names after the colon: `table.column` for a unique,
    /// primary-key or not-null violation (`UNIQUE constraint failed: sales.id` →
    /// `sales.id`), the constraint's name or its expression for a check. The names
    /// (PostgreSQL; SQLite in brackets):
    /// - `sales_pkey` (`sales.id`): the sale id is taken;
    /// - `sales_check` (`units_left >= 0 AND units_left <= units`): units left out of
    ///   range (must not happen);
    /// - `sales_name_check`, `sales_price_cents_check`, `sales_units_check`,
    ///   `sales_pay_window_ms_check`, `sales_ends_after_start`,
    ///   `sales_token_factor_range`, `sales_per_user_limit_range` (the check's expression): a sale
    ///   setting out of range (the checks of [`OrdersDb::create_sale`](super::OrdersDb::create_sale)
    ///   refuse these first, as [`DbError::Invalid`]);
    /// - `orders_check` (`(status = 'paid') = (paid_ms IS NOT NULL)`): a payment left an
    ///   order inconsistent (must not happen).
    #[error("constraint {constraint} violated")]
    Constraint {
        /// The constraint's name (see above).
        constraint: String,
    },
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
                    // lock not available, a write refused in a read-only transaction (a
                    // standby answering: the shard re-resolves its primary, see
                    // `failover`), and unique violations (a race between workers: the retry
                    // finds the winner's outcome).
                    let pg = code.starts_with("08")
                        || code.starts_with("40")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "55P03"
                        || code == "25006"
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

impl DbError {
    /// `e` as the error of a request-path operation: a constraint violation becomes
    /// [`DbError::Constraint`] with the constraint's name, anything else [`DbError::Sql`].
    pub(crate) fn on_request(e: sqlx::Error) -> DbError {
        match violated_constraint(&e) {
            Some(constraint) => DbError::Constraint { constraint },
            None => DbError::Sql(e),
        }
    }
}

/// The name of the constraint `e` reports violated, if it is a constraint violation
/// (unique, primary key, foreign key, not null, check): PostgreSQL's own name, or for
/// SQLite, whose errors carry no name, what its message names after the colon
/// (`UNIQUE constraint failed: orders.request_id` → `orders.request_id`).
pub(crate) fn violated_constraint(e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    let violation = matches!(
        d.kind(),
        sqlx::error::ErrorKind::UniqueViolation
            | sqlx::error::ErrorKind::ForeignKeyViolation
            | sqlx::error::ErrorKind::NotNullViolation
            | sqlx::error::ErrorKind::CheckViolation
    );
    if !violation {
        return None;
    }
    if let Some(name) = d.constraint() {
        return Some(name.to_string());
    }
    Some(constraint_in_message(d.message()))
}

/// What a SQLite constraint message names: the text after `constraint failed:` (the
/// whole message if it has no such part).
fn constraint_in_message(message: &str) -> String {
    message
        .split_once("constraint failed:")
        .map_or(message, |(_, named)| named)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::{DbError, constraint_in_message};
    use crate::db::{DbOptions, OrdersDb, Shard};

    #[test]
    fn sqlite_messages_name_their_constraint() {
        assert_eq!(
            constraint_in_message("UNIQUE constraint failed: orders.request_id"),
            "orders.request_id"
        );
        assert_eq!(
            constraint_in_message("CHECK constraint failed: per_user_limit = 1"),
            "per_user_limit = 1"
        );
        assert_eq!(constraint_in_message("something else"), "something else");
    }

    /// A duplicate key and a failed check, run straight against each backend, come out of
    /// the request path named (the request-path operations check their arguments first, so
    /// only raw statements reach the constraints); anything else stays `Sql`.
    #[tokio::test]
    async fn request_path_violations_name_their_constraint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = crate::testing::sqlite(dir.path(), &DbOptions::default()).await;
        check(
            &sqlite,
            "sales.id",
            "units_left >= 0 AND units_left <= units",
        )
        .await;
        if let Some((pg, _scratch)) = crate::testing::postgres(&DbOptions::default()).await {
            check(&pg, "sales_pkey", "sales_check").await;
        }
    }

    async fn check(db: &OrdersDb, duplicate: &str, check: &str) {
        const INSERT: &str = "INSERT INTO sales (id, name, price_cents, units, units_left, \
                              starts_at_ms, pay_window_ms, created_ms) \
                              VALUES (1, 'x', 1, 1, 1, 0, 1, 0)";
        const OVERSELL: &str = "UPDATE sales SET units_left = -1 WHERE id = 1";
        const BROKEN: &str = "SELECT no_such_column FROM sales";
        let run = |sql: &'static str| async move {
            match db.control() {
                Shard::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
                Shard::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            }
        };
        run(INSERT).await.expect("the first sale");
        let named = |e: sqlx::Error| match DbError::on_request(e) {
            DbError::Constraint { constraint } => Some(constraint),
            _ => None,
        };
        let e = run(INSERT).await.expect_err("a duplicate id");
        assert_eq!(named(e).as_deref(), Some(duplicate), "{}", db.backend());
        let e = run(OVERSELL).await.expect_err("units left below zero");
        assert_eq!(named(e).as_deref(), Some(check), "{}", db.backend());
        let e = run(BROKEN).await.expect_err("no such column");
        assert!(
            matches!(DbError::on_request(e), DbError::Sql(_)),
            "{}",
            db.backend()
        );
    }
}
