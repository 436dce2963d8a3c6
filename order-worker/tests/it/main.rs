//! Integration tests of the order workers. Every database test runs on SQLite (a temporary
//! file) and on PostgreSQL (a fresh database on 127.0.0.1:5432; under `CI` it must answer).

mod cancel;
mod db;
mod process;
mod worker;

use order_worker::db::{DbOptions, NewSale, OrdersDb};
use order_worker::purchase::PurchaseMessage;

/// Runs `$body` (an async fn taking an `OrdersDb`) once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = order_worker::testing::sqlite(dir.path(), &Default::default()).await;
                super::$body(db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((db, _scratch)) =
                    order_worker::testing::postgres(&Default::default()).await
                else {
                    return;
                };
                super::$body(db.clone()).await;
                db.close().await;
            }
        }
    };
}

pub fn purchase(ticket: &str, sale: u64, user: &str) -> PurchaseMessage {
    PurchaseMessage {
        ticket: ticket.to_string(),
        sale,
        user: user.to_string(),
        price_cents: 100,
        accepted_at_ms: 1,
    }
}

pub async fn sale(db: &OrdersDb, id: u64, units: u64, pay_window_ms: u64) {
    db.create_sale(
        &NewSale {
            id,
            name: format!("sale {id}"),
            price_cents: 100,
            units,
            starts_at_ms: 0,
            pay_window_ms: Some(pay_window_ms),
        },
        0,
    )
    .await
    .expect("create sale");
}

#[allow(dead_code)]
pub fn options() -> DbOptions {
    DbOptions::default()
}
