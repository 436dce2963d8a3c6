//! Worker heartbeats: the `workers` table (upsert, listing, stop marks, pruning) and a
//! crew writing its members' beats, on both backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use order_worker::canceller::CancellerConfig;
use order_worker::crew::{Crew, CrewConfig};
use order_worker::db::{
    DbError, HEARTBEAT_ROWS_MAX, OrdersDb, WORKER_PRUNE_EVERY_MS, WORKER_PRUNE_WINDOW_MS,
    WORKER_ROWS_TTL_MS, WORKERS_LISTED_MAX, WorkerBeat, WorkerKind,
};
use order_worker::worker::WorkerConfig;
use queue::{Clock, Engine, Queue, SystemClock};

use crate::{T0, WAIT, both_backends, publish, purchase, sale, wait_until};

/// A time `offset_ms` into a prune period (after T0): in the prune window iff
/// `offset_ms < WORKER_PRUNE_WINDOW_MS`.
fn at(periods: u64, offset_ms: u64) -> u64 {
    (T0 / WORKER_PRUNE_EVERY_MS + periods) * WORKER_PRUNE_EVERY_MS + offset_ms
}

/// Outside any prune window.
const MID: u64 = WORKER_PRUNE_EVERY_MS / 2;
const _: () = assert!(MID >= WORKER_PRUNE_WINDOW_MS, "MID is outside the window");

fn beat(id: &str, kind: WorkerKind, progress_ms: u64, handled: u64) -> WorkerBeat {
    WorkerBeat {
        id: id.to_string(),
        kind,
        host: "host-a".to_string(),
        pid: 4242,
        started_ms: T0,
        beat_ms: 0,
        progress_ms,
        handled,
        stopped_ms: None,
    }
}

async fn listed(db: &OrdersDb) -> HashMap<String, WorkerBeat> {
    db.workers(WORKERS_LISTED_MAX)
        .await
        .expect("list workers")
        .into_iter()
        .map(|w| (w.id.clone(), w))
        .collect()
}

async fn upsert_list_and_stop(db: OrdersDb) {
    assert!(db.workers(10).await.expect("list").is_empty());
    let t = at(1, MID);
    let a = beat("h-1-worker-0", WorkerKind::Worker, t - 5, 0);
    let c = beat("h-1-canceller-0", WorkerKind::Canceller, t - 7, 2);
    assert_eq!(
        db.heartbeat(&[a.clone(), c.clone()], t)
            .await
            .expect("beat"),
        0
    );
    let rows = listed(&db).await;
    assert_eq!(rows.len(), 2);
    // Every field round-trips; beat_ms is the heartbeat's time, not the beat's.
    assert_eq!(
        rows[&a.id],
        WorkerBeat {
            beat_ms: t,
            ..a.clone()
        }
    );
    assert_eq!(
        rows[&c.id],
        WorkerBeat {
            beat_ms: t,
            ..c.clone()
        }
    );

    // A later beat replaces the row and moves it to the front.
    let a2 = WorkerBeat {
        progress_ms: t + 900,
        handled: 5,
        ..a.clone()
    };
    db.heartbeat(std::slice::from_ref(&a2), t + 1_000)
        .await
        .expect("beat");
    let newest = db.workers(1).await.expect("list");
    assert_eq!(newest.len(), 1, "the limit holds");
    assert_eq!(
        newest[0],
        WorkerBeat {
            beat_ms: t + 1_000,
            ..a2.clone()
        }
    );
    assert_eq!(
        listed(&db).await[&c.id].beat_ms,
        t,
        "the other row is untouched"
    );
    assert!(db.workers(0).await.expect("list").is_empty());

    // Stop marks (unknown ids skipped, repeats counted once).
    let ids = vec![a.id.clone(), "nobody".to_string(), a.id.clone()];
    assert_eq!(db.mark_stopped(&ids, t + 2_000).await.expect("stop"), 1);
    let rows = listed(&db).await;
    assert_eq!(rows[&a.id].stopped_ms, Some(t + 2_000));
    assert_eq!(rows[&a.id].beat_ms, t + 2_000, "the stop is its last beat");
    assert_eq!(rows[&a.id].handled, 5);
    assert_eq!(rows[&c.id].stopped_ms, None);

    // Bad input is refused, and nothing is written.
    let too_many: Vec<WorkerBeat> = (0..=HEARTBEAT_ROWS_MAX)
        .map(|i| beat(&format!("w{i}"), WorkerKind::Worker, t, 0))
        .collect();
    assert!(matches!(
        db.heartbeat(&too_many, t).await,
        Err(DbError::Invalid(_))
    ));
    let ids: Vec<String> = too_many.iter().map(|b| b.id.clone()).collect();
    assert!(matches!(
        db.mark_stopped(&ids, t).await,
        Err(DbError::Invalid(_))
    ));
    for bad in [
        beat("", WorkerKind::Worker, t, 0),
        beat(&"x".repeat(201), WorkerKind::Worker, t, 0),
        WorkerBeat {
            host: "h".repeat(256),
            ..beat("ok-id", WorkerKind::Worker, t, 0)
        },
        WorkerBeat {
            handled: u64::MAX,
            ..beat("ok-id", WorkerKind::Worker, t, 0)
        },
    ] {
        assert!(
            matches!(
                db.heartbeat(std::slice::from_ref(&bad), t).await,
                Err(DbError::Invalid(_))
            ),
            "{bad:?} is refused"
        );
    }
    assert_eq!(listed(&db).await.len(), 2, "nothing refused was written");
}
both_backends!(
    heartbeats_upsert_list_and_mark_stopped,
    upsert_list_and_stop
);

async fn listing_capped(db: OrdersDb) {
    let t = at(1, MID);
    let total = WORKERS_LISTED_MAX + 50;
    let all: Vec<WorkerBeat> = (0..total)
        .map(|i| beat(&format!("w{i:04}"), WorkerKind::Worker, t, 0))
        .collect();
    for (k, chunk) in all.chunks(HEARTBEAT_ROWS_MAX).enumerate() {
        db.heartbeat(chunk, t + k as u64).await.expect("beat");
    }
    let rows = db.workers(usize::MAX).await.expect("list");
    assert_eq!(rows.len(), WORKERS_LISTED_MAX);
    assert!(
        rows.windows(2)
            .all(|w| (w[0].beat_ms, &w[1].id) >= (w[1].beat_ms, &w[0].id)),
        "newest beat first, then by id"
    );
    assert_eq!(
        rows[0].id,
        all[(total - 1) / HEARTBEAT_ROWS_MAX * HEARTBEAT_ROWS_MAX].id,
        "the first row of the last heartbeat leads"
    );
}
both_backends!(workers_listing_is_capped_newest_first, listing_capped);

/// Makes row `id` look `by_ms` older to the database (its `seen_ms` moved back).
async fn backdate(db: &OrdersDb, id: &str, by_ms: u64) {
    let by = i64::try_from(by_ms).expect("small");
    let sql = "UPDATE workers SET seen_ms = seen_ms - $1 WHERE id = $2";
    let n = match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query(sql)
            .bind(by)
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
        order_worker::db::Shard::Postgres(p) => sqlx::query(sql)
            .bind(by)
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
    }
    .expect("backdate");
    assert_eq!(n, 1, "{id}");
}

async fn stale_rows_pruned(db: OrdersDb) {
    const MARGIN_MS: u64 = 10 * 60 * 1000;
    let old = beat("old", WorkerKind::Worker, 0, 0);
    let recent = beat("recent", WorkerKind::Canceller, 0, 0);
    let fresh = beat("fresh", WorkerKind::Worker, 0, 0);
    let prune_at = at(100, WORKER_PRUNE_WINDOW_MS / 2);
    // Every beat is written at a host time far from the database's (T0 is in 2023): the
    // verdict is the database's clock's alone.
    for b in [&old, &recent] {
        db.heartbeat(std::slice::from_ref(b), at(1, MID))
            .await
            .expect("beat");
    }
    // By the database's clock, `old` was last seen past the TTL, `recent` within it.
    backdate(&db, "old", WORKER_ROWS_TTL_MS + MARGIN_MS).await;
    backdate(&db, "recent", WORKER_ROWS_TTL_MS - MARGIN_MS).await;

    // Outside a window, a heartbeat never prunes, however stale the rows.
    let quiet = prune_at - WORKER_PRUNE_EVERY_MS + MID;
    assert_eq!(
        db.heartbeat(std::slice::from_ref(&fresh), quiet)
            .await
            .expect("beat"),
        0
    );
    assert_eq!(listed(&db).await.len(), 3);

    // In a window, rows not seen for the TTL go (whatever the beating host's clock says).
    assert_eq!(
        db.heartbeat(std::slice::from_ref(&fresh), prune_at)
            .await
            .expect("beat"),
        1
    );
    let rows = listed(&db).await;
    assert!(!rows.contains_key("old"), "old pruned");
    assert!(rows.contains_key("recent") && rows.contains_key("fresh"));
    // A host whose clock runs a day ahead prunes nothing live.
    assert_eq!(
        db.heartbeat(std::slice::from_ref(&fresh), prune_at + 24 * 3600 * 1000)
            .await
            .expect("beat"),
        0
    );

    // The explicit pruning takes `recent` once it is past the TTL too.
    assert_eq!(db.prune_workers().await.expect("prune"), 0);
    backdate(&db, "recent", 2 * MARGIN_MS).await;
    assert_eq!(db.prune_workers().await.expect("prune"), 1);
    let rows = listed(&db).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), vec!["fresh"]);
}
both_backends!(stale_worker_rows_are_pruned, stale_rows_pruned);

/// A crew on a real-time queue in `dir`: `workers` workers and one canceller, long polls of
/// 50 ms.
fn start_crew(db: &OrdersDb, q: &Arc<dyn Queue>, workers: usize) -> Crew {
    Crew::start(
        db.clone(),
        q.clone(),
        None,
        CrewConfig {
            workers,
            cancellers: 1,
            worker: WorkerConfig {
                wait_ms: 50,
                ..WorkerConfig::default()
            },
            canceller: CancellerConfig {
                wait_ms: 50,
                ..CancellerConfig::default()
            },
        },
        Arc::new(SystemClock),
    )
}

/// The rows of `ids`, once all of them are listed.
async fn rows_of(db: &OrdersDb, ids: &[String]) -> Option<Vec<WorkerBeat>> {
    let rows = listed(db).await;
    ids.iter().map(|id| rows.get(id).cloned()).collect()
}

async fn crew_beats(db: OrdersDb) {
    const UNITS: u64 = 3;
    const BUYERS: usize = 5;
    const WINDOW_MS: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("queue"));
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, UNITS, WINDOW_MS).await;
    let purchases: Vec<_> = (0..BUYERS)
        .map(|i| purchase(&format!("t{i}"), 1, &format!("u{i}")))
        .collect();
    publish(q.as_ref(), &purchases).await;

    let crew = start_crew(&db, &q, 2);
    let members = crew.members().to_vec();
    assert_eq!(members.len(), 3);
    let kinds: Vec<WorkerKind> = members.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        vec![
            WorkerKind::Worker,
            WorkerKind::Worker,
            WorkerKind::Canceller
        ]
    );
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    for m in &members {
        assert!(
            m.id.contains(&format!("-{}-{}-", std::process::id(), m.kind.as_str())),
            "{}",
            m.id
        );
    }

    // Every member gets a row at once (the first beat does not wait a period).
    wait_until("a row per member", WAIT, || async {
        rows_of(&db, &ids).await.is_some()
    })
    .await;
    let first = rows_of(&db, &ids).await.expect("rows");
    for (row, m) in first.iter().zip(&members) {
        assert_eq!(
            (row.kind, row.pid, row.stopped_ms),
            (m.kind, std::process::id(), None)
        );
        assert_eq!(row.host, order_worker::liveness::host_name());
        assert!(row.beat_ms >= row.started_ms);
    }

    // Workers' `handled` adds up to the purchases decided; the canceller's to the orders
    // it cancelled (every unit, unpaid after 300 ms).
    wait_until(
        "every purchase decided and every order cancelled",
        WAIT,
        || async {
            let Some(rows) = rows_of(&db, &ids).await else {
                return false;
            };
            let decided: u64 = rows[..2].iter().map(|r| r.handled).sum();
            decided == BUYERS as u64 && rows[2].handled == UNITS
        },
    )
    .await;
    assert_eq!(db.outcome_counts(1).await.expect("outcomes"), (UNITS, 2));
    assert_eq!(db.order_counts(1).await.expect("counts").cancelled, UNITS);
    assert_eq!(crew.workers.messages.load(Ordering::Relaxed), BUYERS as u64);
    assert!(crew.heartbeats.written.load(Ordering::Relaxed) >= 1);
    assert_eq!(crew.heartbeats.failed.load(Ordering::Relaxed), 0);

    // Beats and progress go on while idle (long polls that run out are steps).
    let before = rows_of(&db, &ids).await.expect("rows");
    wait_until("fresh beats and progress of every member", WAIT, || async {
        let Some(now) = rows_of(&db, &ids).await else {
            return false;
        };
        now.iter()
            .zip(&before)
            .all(|(n, b)| n.beat_ms > b.beat_ms && n.progress_ms > b.progress_ms)
    })
    .await;
    let beats = crew.beats();
    assert!(
        beats
            .iter()
            .all(|b| b.progress_ms > 0 && b.stopped_ms.is_none())
    );

    crew.stop().await;
    let stopped_at = SystemClock.now_ms();
    let rows = rows_of(&db, &ids).await.expect("rows");
    let decided: u64 = rows[..2].iter().map(|r| r.handled).sum();
    assert_eq!((decided, rows[2].handled), (BUYERS as u64, UNITS));
    for r in &rows {
        let s = r
            .stopped_ms
            .unwrap_or_else(|| panic!("{} marked stopped", r.id));
        assert!(s <= stopped_at && s == r.beat_ms, "{r:?}");
    }
}
both_backends!(crew_writes_heartbeats_and_marks_stop, crew_beats);

async fn heartbeat_failures_never_stop_the_crew(db: OrdersDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("queue"));
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, 10, 600_000).await;
    // The heartbeats fail from the start: their table is gone.
    let drop = "DROP TABLE workers";
    match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query(drop).execute(p).await.map(|_| ()),
        order_worker::db::Shard::Postgres(p) => sqlx::query(drop).execute(p).await.map(|_| ()),
    }
    .expect("drop the workers table");
    let crew = start_crew(&db, &q, 1);
    assert!(db.workers(10).await.is_err(), "no table, no listing");
    let failed = || crew.heartbeats.failed.load(Ordering::Relaxed);
    wait_until("a failed heartbeat", WAIT, || async { failed() >= 1 }).await;
    // The crew goes on after it: the purchases are decided...
    let purchases: Vec<_> = (0..4)
        .map(|i| purchase(&format!("t{i}"), 1, &format!("u{i}")))
        .collect();
    publish(q.as_ref(), &purchases).await;
    let worker = crew.members()[0].liveness.clone();
    wait_until("the purchases decided and counted", WAIT, || async {
        worker.handled.load(Ordering::Relaxed) == 4
    })
    .await;
    assert_eq!(db.outcome_counts(1).await.expect("outcomes"), (4, 0));
    // ...and the heartbeats keep trying.
    let so_far = failed();
    wait_until("another heartbeat attempt", WAIT, || async {
        failed() > so_far
    })
    .await;
    assert_eq!(crew.heartbeats.written.load(Ordering::Relaxed), 0);
    // The stop ends (its last beats fail and are logged).
    tokio::time::timeout(WAIT, crew.stop())
        .await
        .expect("the crew stops");
}
both_backends!(
    heartbeat_failures_never_stop_the_crew,
    heartbeat_failures_never_stop_the_crew
);

/// A host clock `offset_ms` off the real one.
#[derive(Debug)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.0)
    }
}

/// Issue 16, finding 10: liveness was judged on each host's clock (the gateway's now minus
/// the beat the worker's host wrote), so a worker whose host runs three hours behind looked
/// dead while beating, and one three hours ahead looked alive for three hours after it
/// stopped. Its beats are now aged on the database's clock.
async fn skewed_hosts(db: OrdersDb) {
    const SKEW_MS: i64 = 3 * 3600 * 1000;
    const FRESH_MS: u64 = 60_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("queue"));
    let q: Arc<dyn Queue> = engine.clone();
    let mut crews = Vec::new();
    for skew in [-SKEW_MS, SKEW_MS] {
        crews.push(Crew::start(
            db.clone(),
            q.clone(),
            None,
            CrewConfig {
                workers: 1,
                cancellers: 0,
                worker: WorkerConfig {
                    wait_ms: 50,
                    ..WorkerConfig::default()
                },
                canceller: CancellerConfig::default(),
            },
            Arc::new(Skewed(skew)),
        ));
    }
    let ids: Vec<String> = crews.iter().map(|c| c.members()[0].id.clone()).collect();
    wait_until("both skewed workers beat and step", WAIT, || async {
        let ages = db.worker_ages(WORKERS_LISTED_MAX).await.expect("ages");
        ids.iter().all(|id| {
            ages.iter()
                .any(|a| &a.beat.id == id && a.progress_age_ms < FRESH_MS)
        })
    })
    .await;
    let real_now = SystemClock.now_ms();
    let ages = db.worker_ages(WORKERS_LISTED_MAX).await.expect("ages");
    for (id, skew) in ids.iter().zip([-SKEW_MS, SKEW_MS]) {
        let a = ages.iter().find(|a| &a.beat.id == id).expect("a row");
        // The host wrote its own skewed time...
        assert!(
            a.beat
                .beat_ms
                .abs_diff(real_now.saturating_add_signed(skew))
                < FRESH_MS,
            "{a:?}"
        );
        // ...yet by the database's clock the beat is fresh, and so is the loop's step.
        assert!(a.beat_age_ms < FRESH_MS, "{a:?}");
        assert!(a.progress_age_ms < FRESH_MS, "{a:?}");
    }
    // The old verdict, this host's now minus the beat, was three hours off either way.
    let behind = ages.iter().find(|a| a.beat.id == ids[0]).expect("row");
    assert!(real_now.saturating_sub(behind.beat.beat_ms) > FRESH_MS);

    // A stopped member's beat ages on the database's clock too.
    for c in crews {
        c.stop().await;
    }
    let ages = db.worker_ages(WORKERS_LISTED_MAX).await.expect("ages");
    for id in &ids {
        let a = ages.iter().find(|a| &a.beat.id == id).expect("a row");
        assert!(
            a.beat.stopped_ms.is_some() && a.beat_age_ms < FRESH_MS,
            "{a:?}"
        );
    }
}
both_backends!(liveness_is_judged_on_the_database_clock, skewed_hosts);
