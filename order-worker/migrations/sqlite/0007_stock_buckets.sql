-- Stock buckets (SQLite; the same column as ../postgres/0007_stock_buckets.sql).
--
-- stock_buckets: how many buckets the sale's units are split over in a Redis stock store
--   (inventory/src/keys.rs: each bucket under its own hash tag, so a hot sale spreads over a
--   Redis Cluster's masters), 1..=64 (inventory::STOCK_BUCKETS_MAX). Existing sales get 1,
--   the layout from before buckets, so their stock reads unchanged.
ALTER TABLE sales ADD COLUMN stock_buckets INTEGER NOT NULL DEFAULT 1
    CHECK (stock_buckets BETWEEN 1 AND 64);
