-- When the database last saw each row's heartbeat, by the database's own clock (ms since
-- the Unix epoch): liveness is judged on this clock, not on each host's (issue 16), so a
-- host whose clock is off is neither taken for dead nor kept alive. 0: not seen since the
-- column was added (the next beat sets it). Stale rows are pruned by it too.
ALTER TABLE workers ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX workers_by_seen ON workers (seen_ms);
