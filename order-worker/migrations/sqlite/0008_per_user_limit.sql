-- A per-sale limit of N units per person (SQLite; the same rules as
-- ../postgres/0008_per_user_limit.sql).
--
-- per_user_limit: units one person may hold of the sale, 1..=10
--   (inventory::PER_USER_LIMIT_MAX); existing sales keep their 1.
-- orders.slot: which of the buyer's N places an active order takes, 0..N-1, chosen by the
--   worker that decides it (the lowest free one). At most one active order per (sale, user,
--   slot) replaces at most one per (sale, user): with N = 1 every order takes slot 0, which
--   is exactly the rule from before. Existing orders get 0.
--
-- SQLite cannot change a column's check, so per_user_limit is copied to a new column with
-- the new check, the old one dropped and the new one renamed (the column moves to the end
-- of the table; every statement names its columns).
ALTER TABLE sales ADD COLUMN per_user_limit_n INTEGER NOT NULL DEFAULT 1
    CHECK (per_user_limit_n BETWEEN 1 AND 10);
UPDATE sales SET per_user_limit_n = per_user_limit;
ALTER TABLE sales DROP COLUMN per_user_limit;
ALTER TABLE sales RENAME COLUMN per_user_limit_n TO per_user_limit;

ALTER TABLE orders ADD COLUMN slot INTEGER NOT NULL DEFAULT 0
    CHECK (slot BETWEEN 0 AND 9);

-- At most one active (pending or paid) order per user, sale and slot: at most N per user
-- and sale, since a worker only ever gives slots 0..N-1.
CREATE UNIQUE INDEX orders_active_slot ON orders (sale_id, user_id, slot)
    WHERE status <> 'cancelled';
DROP INDEX orders_one_active;
