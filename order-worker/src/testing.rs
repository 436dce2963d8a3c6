//! Scratch databases for tests (this crate's and the gateway's): a SQLite file in a temporary
//! directory, or a fresh PostgreSQL database per test, dropped afterwards.
//!
//! PostgreSQL is found at `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the maintenance database used to create and
//! drop the scratch ones). When it does not answer, [`postgres`] returns `None` so the test
//! can skip — except when the `CI` environment variable is set, where it panics: under CI the
//! PostgreSQL tests fail, never skip.

use sqlx::Connection;

use crate::db::{DbOptions, OrdersDb};

/// Default maintenance URL of the test PostgreSQL.
pub const POSTGRES_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh PostgreSQL database, dropped (with `FORCE`) when this is dropped.
#[derive(Debug)]
pub struct PgScratch {
    admin_url: String,
    name: String,
    /// URL of the scratch database.
    pub url: String,
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Dropped from inside a runtime or not: a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// Whether tests run under CI (services must be there).
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A fresh, migrated PostgreSQL database, or `None` (outside CI) if PostgreSQL does not
/// answer. Panics under CI when it does not.
pub async fn postgres(options: &DbOptions) -> Option<(OrdersDb, PgScratch)> {
    let admin_url =
        std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL_DEFAULT.to_string());
    let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) if under_ci() => panic!("PostgreSQL at {admin_url} is required under CI: {e}"),
        Err(e) => {
            eprintln!("skipping: PostgreSQL at {admin_url} does not answer: {e}");
            return None;
        }
    };
    let name = format!("seckill_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    let _ = admin.close().await;
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_POSTGRES_URL has no database part: {admin_url}"),
    };
    let scratch = PgScratch {
        admin_url,
        name,
        url: url.clone(),
    };
    let db = OrdersDb::connect(&url, options)
        .await
        .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    Some((db, scratch))
}

/// A migrated SQLite database in `dir`.
pub async fn sqlite(dir: &std::path::Path, options: &DbOptions) -> OrdersDb {
    let url = format!("sqlite:{}", dir.join("orders.db").display());
    OrdersDb::connect(&url, options)
        .await
        .unwrap_or_else(|e| panic!("opening {url}: {e}"))
}
