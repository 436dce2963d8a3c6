//! Order workers: will drain the purchase queue into SQLite/PostgreSQL idempotently and cancel unpaid orders through delayed messages. Not built yet (see ARCHITECTURE.md).
