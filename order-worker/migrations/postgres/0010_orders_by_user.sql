-- A shopper's orders (PostgreSQL; the same index as ../sqlite/0010_orders_by_user.sql).
--
-- orders_by_user: "my orders" (GET /api/orders, order-worker/src/db/by_user.rs) reads one
--   user's newest orders; the other indexes on orders lead with sale_id or pay_by_ms, so
--   without this the look-up would scan the whole table. The admin's order look-up by
--   user id (order-worker/src/db/lookup.rs) uses it too.
CREATE INDEX orders_by_user ON orders (user_id, created_ms);
