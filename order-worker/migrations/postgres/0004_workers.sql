-- Heartbeats of the order workers and cancellers of every process (PostgreSQL; the same table
-- as ../sqlite/0004_workers.sql). The database plays RocketMQ's name server: each
-- process's crew upserts its members' rows every second (OrdersDb::heartbeat), so every
-- gateway sees the workers of all processes. Rows not beaten for an hour are pruned.
CREATE TABLE workers (
    id           TEXT    PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 200),
    kind         TEXT    NOT NULL CHECK (kind IN ('worker', 'canceller')),
    host         TEXT    NOT NULL CHECK (char_length(host) <= 255),
    pid          BIGINT  NOT NULL CHECK (pid >= 0),
    started_ms   BIGINT  NOT NULL,
    -- Last heartbeat.
    beat_ms      BIGINT  NOT NULL,
    -- Last step of its loop (a fetch, a decision, a long poll that timed out): not stuck.
    progress_ms  BIGINT  NOT NULL,
    -- Messages it finished: purchases decided (workers), orders cancelled (cancellers).
    handled      BIGINT  NOT NULL CHECK (handled >= 0),
    stopped_ms   BIGINT
);

-- The listing (newest beat first) and the pruning of stale rows.
CREATE INDEX workers_by_beat ON workers (beat_ms);
