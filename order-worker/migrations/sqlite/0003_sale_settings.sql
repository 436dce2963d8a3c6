-- Per-sale settings (SQLite; the same columns as ../postgres/0003_sale_settings.sql).
--
-- ends_at_ms: when the sale stops taking purchases (ms since the Unix epoch; NULL: open
--   until sold out); after its start.
-- token_factor_milli: the sale's own purchase-token factor ×1000 (0.1..=100.0), overriding
--   the gateway's global factor; NULL: the global one.
-- per_user_limit: units one person may hold. Only 1 is supported end to end (the stock
--   store's holders, the partial unique index orders_one_active), so the check allows
--   only 1; allowing more means changing that index too.
--
-- SQLite adds columns with column constraints only (a check may name other columns) and
-- tests them against the existing rows.
ALTER TABLE sales ADD COLUMN ends_at_ms INTEGER
    CHECK (ends_at_ms IS NULL OR ends_at_ms > starts_at_ms);
ALTER TABLE sales ADD COLUMN token_factor_milli INTEGER
    CHECK (token_factor_milli IS NULL OR token_factor_milli BETWEEN 100 AND 100000);
ALTER TABLE sales ADD COLUMN per_user_limit INTEGER NOT NULL DEFAULT 1
    CHECK (per_user_limit = 1);
