-- A per-sale limit of N units per person (PostgreSQL; the same rules as
-- ../sqlite/0008_per_user_limit.sql).
--
-- per_user_limit: units one person may hold of the sale, 1..=10
--   (inventory::PER_USER_LIMIT_MAX); existing sales keep 1.
-- orders.slot: which of the buyer's N places an active order takes, 0..N-1, chosen by the
--   worker that decides it (the lowest free one, with the sale's row locked). At most one
--   active order per (sale, user, slot) replaces at most one per (sale, user): with N = 1
--   every order takes slot 0, which is exactly the rule from before. Existing orders get 0.
ALTER TABLE sales
    DROP CONSTRAINT sales_one_per_user,
    ADD CONSTRAINT sales_per_user_limit_range
        CHECK (per_user_limit BETWEEN 1 AND 10);

ALTER TABLE orders
    ADD COLUMN slot INTEGER NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_slot_range CHECK (slot BETWEEN 0 AND 9);

-- At most one active (pending or paid) order per user, sale and slot: at most N per user
-- and sale, since a worker only ever gives slots 0..N-1.
CREATE UNIQUE INDEX orders_active_slot ON orders (sale_id, user_id, slot)
    WHERE status <> 'cancelled';
DROP INDEX orders_one_active;
