-- Operator control of a sale (PostgreSQL; the same columns as ../sqlite/0009_sale_control.sql).
--
-- paused: 1 while an operator has paused the sale (the gateways refuse its purchases and
--   tokens, 409 sale_paused); 0 otherwise. Purchases already queued are still decided.
--   An INTEGER, not a BOOLEAN, so both backends decode it the same way.
-- ended_ms: when an operator ended the sale early (ms since the Unix epoch; NULL: never).
--   Ending also sets ends_at_ms to that time (and, for a sale not started yet, starts_at_ms
--   just before it), so every reader that knows ends_at_ms sees the sale as ended.
ALTER TABLE sales
    ADD COLUMN paused INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN ended_ms BIGINT,
    ADD CONSTRAINT sales_paused_flag CHECK (paused IN (0, 1));
