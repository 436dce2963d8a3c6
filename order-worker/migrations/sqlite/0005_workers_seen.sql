-- When the database last saw each row's heartbeat, by the database's own clock (ms since
-- the Unix epoch): liveness is judged on this clock, not on each host's (issue 16), so a
-- host whose clock is off is neither taken for dead nor kept alive. Rows already there start
-- from their last beat by their host's clock (the best known); the next beat sets it. Stale
-- rows are pruned by it too. A process of an older version still beating during a rolling
-- upgrade does not set it, so it ages until it is replaced.
ALTER TABLE workers ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
UPDATE workers SET seen_ms = beat_ms;
CREATE INDEX workers_by_seen ON workers (seen_ms);
