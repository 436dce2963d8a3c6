//! The `workers` table: each crew member's heartbeat, pruning of stale rows, the listing,
//! and marking members stopped.
//!
//! Each beat also records when the database saw it, by the database's clock (`seen_ms`):
//! [`OrdersDb::worker_ages`] judges how old a beat is against the database's now, so the
//! hosts' clocks (the crews' and the gateways') never enter a liveness verdict.

use serde::{Deserialize, Serialize};
use sqlx::Row;

#[cfg(doc)]
use super::OrdersDb;
use super::{
    DbError, DbResult, HEARTBEAT_ROWS_MAX, Shard, WORKER_HOST_BYTES_MAX, WORKER_ID_BYTES_MAX,
    WORKER_PRUNE_EVERY_MS, WORKER_PRUNE_ROWS_MAX, WORKER_PRUNE_WINDOW_MS, WORKER_ROWS_TTL_MS,
    WORKERS_LISTED_MAX, to_i64, to_u64,
};

/// A statement as two `&'static str`s, (SQLite, PostgreSQL), with `now` standing for the
/// database's now in ms since the Unix epoch (PostgreSQL: the wall clock, not the
/// transaction's start).
macro_rules! with_db_now {
    ($($part:expr),+ ; now ; $($rest:expr),+) => {
        (
            concat!($($part),+, "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)", $($rest),+),
            concat!($($part),+, "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)", $($rest),+),
        )
    };
}

/// Deletes rows not seen for `$1` ms by the database's clock, at most `$2`, oldest first.
const PRUNE: (&str, &str) = with_db_now!(
    "DELETE FROM workers WHERE id IN \
     (SELECT id FROM workers WHERE seen_ms < "; now; " - $1 ORDER BY seen_ms LIMIT $2)");

/// A worker's row with its ages by the database's clock ([`OrdersDb::worker_ages`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAge {
    /// The row.
    pub beat: WorkerBeat,
    /// How long ago the database saw its last beat (its own clock both times).
    pub beat_age_ms: u64,
    /// How long ago its loop last made a step: the step's age when it was reported (by its
    /// host's clock, both ends) plus [`WorkerAge::beat_age_ms`]; `u64::MAX` before a step.
    pub progress_age_ms: u64,
}

/// What a member of a crew does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    /// An order worker (`worker::OrderWorker`).
    Worker,
    /// A canceller (`canceller::Canceller`).
    Canceller,
}

impl WorkerKind {
    /// The name in the `workers.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Worker => "worker",
            WorkerKind::Canceller => "canceller",
        }
    }

    fn parse(s: &str) -> DbResult<WorkerKind> {
        match s {
            "worker" => Ok(WorkerKind::Worker),
            "canceller" => Ok(WorkerKind::Canceller),
            other => Err(DbError::Invalid(format!("unknown worker kind {other:?}"))),
        }
    }
}

/// A row of the `workers` table: a worker's or canceller's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBeat {
    /// Stable id, unique across processes (`{host}-{pid}-{kind}-{n}`).
    pub id: String,
    /// Worker or canceller.
    pub kind: WorkerKind,
    /// Host of its process.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// Its last heartbeat, ms since the Unix epoch ([`OrdersDb::heartbeat`] writes its
    /// `now_ms` here, whatever the beat says).
    pub beat_ms: u64,
    /// The last time its loop made a step (fetched, decided, or a long poll ran out): an
    /// old value under fresh beats means the loop is stuck.
    pub progress_ms: u64,
    /// Messages it finished: purchases decided (workers), orders cancelled (cancellers).
    pub handled: u64,
    /// When it stopped, if it did.
    pub stopped_ms: Option<u64>,
}

impl Shard {
    /// Writes the heartbeats of a process's crew (at most [`HEARTBEAT_ROWS_MAX`]) in one
    /// transaction: each member's row is inserted or replaced, with `beat_ms = now_ms` (the
    /// host's clock, shown) and `seen_ms` the database's now (what ages are judged on).
    /// When `now_ms` falls in the first [`WORKER_PRUNE_WINDOW_MS`] of a
    /// [`WORKER_PRUNE_EVERY_MS`] period, it also prunes rows not seen for
    /// [`WORKER_ROWS_TTL_MS`] by the database's clock (see [`OrdersDb::prune_workers`]), so
    /// a host whose clock runs ahead never prunes live rows. Returns the rows pruned.
    pub async fn heartbeat(&self, beats: &[WorkerBeat], now_ms: u64) -> DbResult<u64> {
        if beats.len() > HEARTBEAT_ROWS_MAX {
            return Err(DbError::Invalid(format!(
                "at most {HEARTBEAT_ROWS_MAX} beats a heartbeat"
            )));
        }
        let now = to_i64(now_ms, "now")?;
        let mut rows = Vec::with_capacity(beats.len());
        for b in beats {
            if b.id.is_empty() || b.id.len() > WORKER_ID_BYTES_MAX {
                return Err(DbError::Invalid(format!(
                    "a worker id is 1..={WORKER_ID_BYTES_MAX} bytes"
                )));
            }
            if b.host.len() > WORKER_HOST_BYTES_MAX {
                return Err(DbError::Invalid(format!(
                    "a host name is at most {WORKER_HOST_BYTES_MAX} bytes"
                )));
            }
            rows.push((
                b,
                to_i64(b.started_ms, "start")?,
                to_i64(b.progress_ms, "progress")?,
                to_i64(b.handled, "handled")?,
                b.stopped_ms.map(|s| to_i64(s, "stop")).transpose()?,
            ));
        }
        // One lock order for every process (PostgreSQL row locks).
        rows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let prune = now_ms % WORKER_PRUNE_EVERY_MS < WORKER_PRUNE_WINDOW_MS;
        let ttl = to_i64(WORKER_ROWS_TTL_MS, "ttl")?;
        let pruned = in_tx!(self, tx, pg => {
            for (b, started, progress, handled, stopped) in &rows {
                let (lite, postgres) = with_db_now!(
                    "INSERT INTO workers (id, kind, host, pid, started_ms, beat_ms, progress_ms, handled, stopped_ms, seen_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "; now; ") \
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, host = excluded.host, \
                         pid = excluded.pid, started_ms = excluded.started_ms, beat_ms = excluded.beat_ms, \
                         progress_ms = excluded.progress_ms, handled = excluded.handled, \
                         stopped_ms = excluded.stopped_ms, seen_ms = excluded.seen_ms");
                sqlx::query(if pg { postgres } else { lite })
                    .bind(b.id.as_str()).bind(b.kind.as_str()).bind(b.host.as_str())
                    .bind(i64::from(b.pid)).bind(*started).bind(now).bind(*progress)
                    .bind(*handled).bind(*stopped)
                    .execute(&mut *tx).await?;
            }
            if prune {
                let (lite, postgres) = PRUNE;
                sqlx::query(if pg { postgres } else { lite })
                    .bind(ttl).bind(WORKER_PRUNE_ROWS_MAX as i64)
                    .execute(&mut *tx).await?.rows_affected()
            } else {
                0
            }
        });
        Ok(pruned)
    }

    /// Deletes up to [`WORKER_PRUNE_ROWS_MAX`] rows of `workers` not seen for more than
    /// [`WORKER_ROWS_TTL_MS`] by the database's clock (oldest first); returns how many.
    pub async fn prune_workers(&self) -> DbResult<u64> {
        let ttl = to_i64(WORKER_ROWS_TTL_MS, "ttl")?;
        let (lite, postgres) = PRUNE;
        let pg = matches!(self, Shard::Postgres(_));
        let n = on_db!(self, p => sqlx::query(if pg { postgres } else { lite })
            .bind(ttl).bind(WORKER_PRUNE_ROWS_MAX as i64)
            .execute(p).await?.rows_affected());
        Ok(n)
    }

    /// The workers and cancellers of every process, newest beat first (ties by id), at most
    /// `limit` (itself at most [`WORKERS_LISTED_MAX`]).
    pub async fn workers(&self, limit: usize) -> DbResult<Vec<WorkerBeat>> {
        let limit = limit.min(WORKERS_LISTED_MAX) as i64;
        on_db!(self, p => {
            let rows = sqlx::query(concat!(
                "SELECT ", worker_columns!(), " FROM workers ORDER BY beat_ms DESC, id LIMIT $1"))
                .bind(limit).fetch_all(p).await?;
            rows.iter().map(worker_of).collect()
        })
    }

    /// The workers and cancellers of every process, most recently seen first (by the
    /// database's clock, so a host whose clock runs behind is not listed last), with their
    /// ages by the database's clock: a host whose clock is off is judged
    /// correctly (a beat seen a second ago is a second old, whatever time its host wrote).
    pub async fn worker_ages(&self, limit: usize) -> DbResult<Vec<WorkerAge>> {
        let limit = limit.min(WORKERS_LISTED_MAX) as i64;
        let (lite, postgres) = with_db_now!(
            "SELECT ", worker_columns!(), ", "; now; " - seen_ms \
             FROM workers ORDER BY seen_ms DESC, id LIMIT $1");
        let pg = matches!(self, Shard::Postgres(_));
        on_db!(self, p => {
            let rows = sqlx::query(if pg { postgres } else { lite })
                .bind(limit).fetch_all(p).await?;
            rows.iter().map(|r| {
                let beat = worker_of(r)?;
                let beat_age_ms = to_u64(r.try_get::<i64, _>(9)?);
                let progress_age_ms = if beat.progress_ms == 0 {
                    u64::MAX
                } else {
                    beat.beat_ms.saturating_sub(beat.progress_ms).saturating_add(beat_age_ms)
                };
                Ok(WorkerAge { beat, beat_age_ms, progress_age_ms })
            }).collect()
        })
    }

    /// Marks these workers stopped at `now_ms` (also their last beat); at most
    /// [`HEARTBEAT_ROWS_MAX`] ids. Returns the rows it marked (unknown ids are skipped).
    pub async fn mark_stopped(&self, ids: &[String], now_ms: u64) -> DbResult<u64> {
        if ids.len() > HEARTBEAT_ROWS_MAX {
            return Err(DbError::Invalid(format!(
                "at most {HEARTBEAT_ROWS_MAX} ids a call"
            )));
        }
        let now = to_i64(now_ms, "now")?;
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let marked = in_tx!(self, tx, pg => {
            let mut marked = 0;
            for id in &ids {
                let (lite, postgres) = with_db_now!(
                    "UPDATE workers SET stopped_ms = $1, beat_ms = $2, seen_ms = "; now; " WHERE id = $3");
                marked += sqlx::query(if pg { postgres } else { lite })
                    .bind(now).bind(now).bind(*id)
                    .execute(&mut *tx).await?.rows_affected();
            }
            marked
        });
        Ok(marked)
    }
}

/// Reads a [`WorkerBeat`] from a row of [`worker_columns!`].
fn worker_of<R: Row>(r: &R) -> DbResult<WorkerBeat>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = r.try_get(1)?;
    Ok(WorkerBeat {
        id: r.try_get(0)?,
        kind: WorkerKind::parse(&kind)?,
        host: r.try_get(2)?,
        pid: u32::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
        started_ms: to_u64(r.try_get::<i64, _>(4)?),
        beat_ms: to_u64(r.try_get::<i64, _>(5)?),
        progress_ms: to_u64(r.try_get::<i64, _>(6)?),
        handled: to_u64(r.try_get::<i64, _>(7)?),
        stopped_ms: r.try_get::<Option<i64>, _>(8)?.map(to_u64),
    })
}
