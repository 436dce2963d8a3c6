-- Per-sale settings (PostgreSQL; the same columns as ../sqlite/0003_sale_settings.sql).
--
-- ends_at_ms: when the sale stops taking purchases (ms since the Unix epoch; NULL: open
--   until sold out); after its start.
-- token_factor_milli: the sale's own purchase-token factor ×1000 (0.1..=100.0), overriding
--   the gateway's global factor; NULL: the global one.
-- per_user_limit: units one person may hold. Only 1 is supported end to end (the stock
--   store's holders, the partial unique index orders_one_active), so the check allows
--   only 1; allowing more means changing that index too.
ALTER TABLE sales
    ADD COLUMN ends_at_ms          BIGINT,
    ADD COLUMN token_factor_milli  INTEGER,
    ADD COLUMN per_user_limit      INTEGER NOT NULL DEFAULT 1,
    ADD CONSTRAINT sales_ends_after_start
        CHECK (ends_at_ms IS NULL OR ends_at_ms > starts_at_ms),
    ADD CONSTRAINT sales_token_factor_range
        CHECK (token_factor_milli IS NULL OR token_factor_milli BETWEEN 100 AND 100000),
    ADD CONSTRAINT sales_one_per_user
        CHECK (per_user_limit = 1);
