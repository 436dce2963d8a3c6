//! Model-based property test: random sequences of queue operations run against a backend
//! and against a small in-memory model, compared after every step. The backend is any of
//! the conformance suite's (`conformance::Harness`: a `dyn Queue` with `tick` and
//! `restart`): the embedded engine, a broker over one, Redis standalone and Redis Cluster.
//!
//! Operations: publish (with and without a producer id, sometimes a repeated id), batch
//! publish, delayed publish (`Due::After`, `Due::At`), fetch by two consumers of one group
//! and one consumer of a second group, ack (valid, stale, repeated and unknown receipts),
//! nack with a delay, reject, time passing (lease expiry), `tick`, dead-letter
//! list/replay/discard, and close-then-reopen on the same directory and clock.
//!
//! What is checked:
//! - every fetch returns exactly `min(max, ready)` messages, each one the model says is
//!   ready: so nothing confirmed is lost, nothing acked or dead-lettered comes back, no
//!   message is leased while an earlier lease on it is live, and no delayed message (or
//!   nacked retry) is delivered early;
//! - payload, id, headers and due time of every delivery are the ones published;
//! - a repeated id within the de-duplication window is confirmed with the first copy's
//!   offset and stores nothing (the next fresh publish gets the next offset);
//! - attempts are 1, 2, 3... per message per group, never above `max_attempts`; a message
//!   is dead-lettered after exactly `max_attempts` deliveries (on the engine a lease live at
//!   close counts as an expired attempt after reopen; on Redis it runs to its deadline:
//!   `Caps::restart_ends_leases`);
//! - ack/nack/reject outcomes (Acked, AlreadyAcked, LeaseLost, Unknown) follow the receipt
//!   rules; dead letters carry the group, offset, attempts, reason and original message;
//! - at the end everything is acked or dead-lettered, and stays so across a clean reopen.
//!
//! Each case also draws `max_attempts` (1 to 3), `in_flight_max` (4 or unlimited; a fetch
//! then returns `min(max, ready, in_flight_max - in flight)`) and, for the backends with an
//! engine only, the engine's segment size (300 B to 64 KiB, so that segments roll and
//! retention deletes them) and `dedup_entries_max` (3 or unlimited).
//!
//! Where the backends may rightly differ the model follows the harness's capability flags
//! (`conformance::Caps`): whether a restart ends leases, whether the "since open" counters
//! restart from zero, and whether a fetch expires the other groups' leases too.
//!
//! Cases of up to 60 operations: 96 on the engine and through the broker, 192 on Redis, 64
//! on the cluster, each well under a minute ([`cases_default`]); `QUEUE_MODEL_CASES=n` and
//! `QUEUE_MODEL_OPS=n` set them for every backend; `QUEUE_MODEL_SEED=s` replays a run (the
//! seed is printed on failure together with the shrunk sequence of operations, and a
//! summary of what the run exercised is printed with `--nocapture`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngSeed, TestCaseError, TestRunner};
use queue::{
    AckOutcome, Config, Confirm, Due, Engine, Error, FetchOptions, ManualClock, Message, Queue,
    Receipt, StartAt,
};

use crate::conformance::{Backend, Caps, Kind};
use crate::support::{T0, test_config};

const TOPIC: &str = "t";
const GROUPS: [&str; 2] = ["g1", "g2"];
/// Consumers 0 and 1 share group `g1`; consumer 2 is group `g2`.
const CONSUMER_GROUP: [usize; 3] = [0, 0, 1];
const REASON_EXPIRED: &str = "lease expired";
const REASON_RESTARTED: &str = "lease expired (queue restarted)";

#[derive(Debug, Clone, Copy)]
enum IdPick {
    NoId,
    Fresh,
    /// One of the ids used so far (index modulo their number).
    Repeat(u8),
}

#[derive(Debug, Clone, Copy)]
enum DuePick {
    Now,
    After(u64),
    /// `Due::At(now + delta)`; may lie in the past.
    At(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        id: IdPick,
        due: DuePick,
        header: bool,
    },
    Batch(Vec<(IdPick, DuePick, bool)>),
    Fetch {
        consumer: usize,
        max: usize,
        lease_ms: Option<u64>,
    },
    /// A well-behaved consumer: fetch, then ack everything fetched.
    Consume {
        consumer: usize,
        max: usize,
    },
    /// Acks receipts the consumer holds (index modulo their number); `bogus` adds a
    /// receipt for an offset that does not exist.
    Ack {
        consumer: usize,
        picks: Vec<u8>,
        bogus: bool,
    },
    Nack {
        consumer: usize,
        pick: u8,
        delay_ms: u64,
    },
    Reject {
        consumer: usize,
        pick: u8,
    },
    Advance(u64),
    Tick,
    ListDead,
    Replay(u8),
    Discard(u8),
    Reopen,
}

#[derive(Debug, Clone)]
struct Case {
    segment_bytes_max: u64,
    max_attempts: u32,
    in_flight_max: usize,
    dedup_entries_max: usize,
    ops: Vec<Op>,
}

fn id_pick() -> impl Strategy<Value = IdPick> {
    prop_oneof![
        2 => Just(IdPick::NoId),
        3 => Just(IdPick::Fresh),
        2 => any::<u8>().prop_map(IdPick::Repeat),
    ]
}

fn due_pick() -> impl Strategy<Value = DuePick> {
    prop_oneof![
        6 => Just(DuePick::Now),
        2 => (0u64..5_000).prop_map(DuePick::After),
        1 => (-2_000i64..5_000).prop_map(DuePick::At),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let publish = prop_oneof![
        3 => (id_pick(), due_pick(), any::<bool>())
            .prop_map(|(id, due, header)| Op::Publish { id, due, header }),
        1 => vec((id_pick(), due_pick(), any::<bool>()), 1..5).prop_map(Op::Batch),
    ];
    let consume = prop_oneof![
        8 => (
            0usize..3,
            prop_oneof![4 => 1usize..5, 1 => Just(100usize)],
            prop_oneof![2 => Just(None), 1 => (1u64..3_000).prop_map(Some)],
        )
            .prop_map(|(consumer, max, lease_ms)| Op::Fetch { consumer, max, lease_ms }),
        4 => (0usize..3, prop_oneof![1 => 1usize..5, 1 => Just(100usize)])
            .prop_map(|(consumer, max)| Op::Consume { consumer, max }),
        5 => (0usize..3, vec(any::<u8>(), 1..4), prop::bool::weighted(0.1))
            .prop_map(|(consumer, picks, bogus)| Op::Ack { consumer, picks, bogus }),
        2 => (0usize..3, any::<u8>(), 0u64..3_000)
            .prop_map(|(consumer, pick, delay_ms)| Op::Nack { consumer, pick, delay_ms }),
        2 => (0usize..3, any::<u8>()).prop_map(|(consumer, pick)| Op::Reject { consumer, pick }),
    ];
    let time = prop_oneof![
        5 => prop_oneof![8 => 1u64..1_500, 2 => 1_500u64..6_000, 1 => Just(600_000u64)]
            .prop_map(Op::Advance),
        3 => Just(Op::Tick),
    ];
    let admin = prop_oneof![
        2 => Just(Op::ListDead),
        2 => any::<u8>().prop_map(Op::Replay),
        1 => any::<u8>().prop_map(Op::Discard),
        2 => Just(Op::Reopen),
    ];
    prop_oneof![
        8 => publish,
        16 => consume,
        8 => time,
        4 => admin,
    ]
}

fn case(ops_max: usize) -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(300u64), Just(1_024), Just(64 * 1024)],
        prop_oneof![1 => Just(1u32), 1 => Just(2), 4 => Just(3)],
        prop_oneof![1 => Just(4usize), 3 => Just(100_000)],
        prop_oneof![1 => Just(3usize), 3 => Just(2_000_000)],
        vec(op(), 1..ops_max.max(2)),
    )
        .prop_map(
            |(segment_bytes_max, max_attempts, in_flight_max, dedup_entries_max, ops)| Case {
                segment_bytes_max,
                max_attempts,
                in_flight_max,
                dedup_entries_max,
                ops,
            },
        )
}

/// A message the engine confirmed (not a duplicate).
#[derive(Debug, Clone)]
struct MMsg {
    id: Option<u128>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    due_ms: Option<u64>,
}

/// One message's state in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// A dead-letter replay meant for the other group.
    NotForGroup,
    /// Never delivered.
    Fresh,
    /// Delivered; the lease may have expired without the engine having noticed yet (no
    /// fetch or tick since).
    Leased {
        attempt: u32,
        until: u64,
    },
    /// Nacked, or its lease expired and the engine noticed; `epoch` is the engine
    /// incarnation the last receipt was handed out in.
    Waiting {
        attempts: u32,
        ready_at: u64,
        epoch: u32,
    },
    Acked,
    /// Moved to the dead letters.
    Dead,
    /// Its last lease was live (or expired unnoticed) at close and used the last attempt:
    /// the engine dead-letters it when the group's fetch scans it after reopen.
    DeadMaybe,
}

/// A dead letter the model expects.
#[derive(Debug, Clone)]
struct MDead {
    group: usize,
    offset: u64,
    attempts: u32,
    reason: String,
    /// False while the move may not have happened yet (see `St::DeadMaybe`).
    certain: bool,
    dead_offset: Option<u64>,
    dead_at: Option<u64>,
    pending: bool,
}

#[derive(Debug, Clone, Copy)]
enum Settle<'a> {
    Ack,
    Nack { delay_ms: u64, reason: &'a str },
    Reject { reason: &'a str },
}

#[derive(Debug)]
struct Model {
    now: u64,
    epoch: u32,
    max_attempts: u32,
    dedup_window_ms: u64,
    msgs: Vec<MMsg>,
    st: [Vec<St>; 2],
    /// Every de-duplicating registration `(id, offset, at)`, oldest first. An id is a
    /// duplicate while its latest registration is inside the window and fewer than
    /// `dedup_entries_max` ids were registered after it before the publish.
    dedup: Vec<(u128, u64, u64)>,
    dedup_entries_max: usize,
    ids_used: Vec<u128>,
    next_id: u128,
    next_payload: u64,
    dead: Vec<MDead>,
    receipts: [Vec<Receipt>; 3],
    /// Acks per group the backend's `acked` statistic counts: since the queue was opened,
    /// or since the test started where the counters survive a restart.
    acked_counted: [u64; 2],
    caps: Caps,
}

type Check = Result<(), String>;

/// What the generated cases exercised, summed over a run (printed at the end, to see that
/// the interesting paths are reached).
#[derive(Debug, Clone, Copy)]
enum Cov {
    Deliveries,
    Redeliveries,
    Duplicates,
    DelayedDeliveries,
    Acked,
    LeaseLost,
    DeadLetters,
    DeadAfterReopen,
    Replays,
    Reopens,
    ReopensAfterRetention,
}

thread_local! {
    /// What this thread's model run exercised (each backend's test runs on a thread of its
    /// own, so the runs of parallel tests do not mix).
    static COVERAGE: RefCell<[u64; 11]> = const { RefCell::new([0; 11]) };
}
const COVERAGE_NAMES: [&str; 11] = [
    "deliveries",
    "redeliveries",
    "duplicate confirms",
    "delayed deliveries",
    "acked",
    "stale/lost receipts",
    "dead letters",
    "dead after reopen",
    "replays",
    "reopens",
    "reopens after retention",
];

fn cover(c: Cov) {
    COVERAGE.with_borrow_mut(|cov| cov[c as usize] += 1);
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Model {
    fn new(config: &Config, caps: Caps) -> Model {
        Model {
            now: T0,
            epoch: 0,
            max_attempts: config.max_attempts,
            dedup_window_ms: config.dedup_window_ms,
            msgs: Vec::new(),
            st: [Vec::new(), Vec::new()],
            dedup: Vec::new(),
            dedup_entries_max: config.dedup_entries_max,
            ids_used: Vec::new(),
            next_id: 0x5eed_0000_0000_0000_0000_0000_0000_0000,
            next_payload: 0,
            dead: Vec::new(),
            receipts: [Vec::new(), Vec::new(), Vec::new()],
            acked_counted: [0, 0],
            caps,
        }
    }

    fn next_offset(&self) -> u64 {
        self.msgs.len() as u64
    }

    fn attempts(&self, g: usize, off: u64) -> u32 {
        match self.st[g][off as usize] {
            St::Leased { attempt, .. } => attempt,
            St::Waiting { attempts, .. } => attempts,
            _ => 0,
        }
    }

    /// Whether a fetch by group `g` may deliver `off` now.
    fn ready(&self, g: usize, off: u64) -> bool {
        match self.st[g][off as usize] {
            St::Fresh => self.msgs[off as usize].due_ms.is_none_or(|d| d <= self.now),
            St::Waiting { ready_at, .. } => ready_at <= self.now,
            St::Leased { attempt, until } => until <= self.now && attempt < self.max_attempts,
            _ => false,
        }
    }

    /// What the backend does on every tick (and fetch, see [`Model::maintain_for_fetch`]):
    /// expired leases become retries, or dead letters when they used the last attempt.
    fn maintain(&mut self) {
        self.maintain_groups(&[0, 1]);
    }

    /// What a fetch by group `g` maintains: every group's leases, or only `g`'s.
    fn maintain_for_fetch(&mut self, g: usize) {
        if self.caps.fetch_expires_every_group {
            self.maintain();
        } else {
            self.maintain_groups(&[g]);
        }
    }

    fn maintain_groups(&mut self, groups: &[usize]) {
        for &g in groups {
            for off in 0..self.msgs.len() {
                if let St::Leased { attempt, until } = self.st[g][off] {
                    if until > self.now {
                        continue;
                    }
                    if attempt >= self.max_attempts {
                        self.st[g][off] = St::Dead;
                        cover(Cov::DeadLetters);
                        self.dead.push(MDead {
                            group: g,
                            offset: off as u64,
                            attempts: attempt,
                            reason: REASON_EXPIRED.into(),
                            certain: true,
                            dead_offset: None,
                            dead_at: Some(self.now),
                            pending: true,
                        });
                    } else {
                        self.st[g][off] = St::Waiting {
                            attempts: attempt,
                            ready_at: until,
                            epoch: self.epoch,
                        };
                    }
                }
            }
        }
    }

    fn dead_entry(&mut self, g: usize, off: u64) -> Option<&mut MDead> {
        self.dead
            .iter_mut()
            .find(|d| d.group == g && d.offset == off)
    }

    /// The queue was closed cleanly and opened again.
    fn reopened(&mut self) {
        if self.caps.counters_reset_on_restart {
            self.acked_counted = [0, 0];
        }
        if !self.caps.restart_ends_leases {
            // Leases, retries and attempts live in the server: the new client finds them
            // as the old one left them.
            return;
        }
        let old = self.epoch;
        self.epoch += 1;
        for g in 0..2 {
            for off in 0..self.msgs.len() {
                if let St::Leased { attempt, .. } = self.st[g][off] {
                    if attempt >= self.max_attempts {
                        self.st[g][off] = St::DeadMaybe;
                        cover(Cov::DeadLetters);
                        self.dead.push(MDead {
                            group: g,
                            offset: off as u64,
                            attempts: attempt,
                            reason: REASON_RESTARTED.into(),
                            certain: false,
                            dead_offset: None,
                            dead_at: None,
                            pending: true,
                        });
                    } else {
                        self.st[g][off] = St::Waiting {
                            attempts: attempt,
                            ready_at: 0,
                            epoch: old,
                        };
                    }
                }
            }
        }
    }

    /// The engine says `off` was dead-lettered for `g` (it was `DeadMaybe`).
    fn confirm_dead(&mut self, g: usize, off: u64) -> Check {
        ensure!(
            self.st[g][off as usize] == St::DeadMaybe,
            "model: confirm_dead on {:?}",
            self.st[g][off as usize]
        );
        self.st[g][off as usize] = St::Dead;
        cover(Cov::DeadAfterReopen);
        let e = self
            .dead_entry(g, off)
            .ok_or_else(|| format!("model: no dead entry for group {g} offset {off}"))?;
        e.certain = true;
        Ok(())
    }

    /// Checks the outcome of an ack, nack or reject of receipt `r` by group `g` and
    /// applies it.
    fn settle(&mut self, g: usize, r: Receipt, how: Settle<'_>, got: AckOutcome) -> Check {
        match got {
            AckOutcome::LeaseLost => cover(Cov::LeaseLost),
            AckOutcome::Acked if matches!(how, Settle::Ack) => cover(Cov::Acked),
            _ => {}
        }
        let what = format!("{how:?} of {r:?} by {}", GROUPS[g]);
        if r.offset >= self.next_offset() {
            ensure!(
                got == AckOutcome::Unknown,
                "{what}: offset beyond the log, expected Unknown, got {got:?}"
            );
            return Ok(());
        }
        let st = self.st[g][r.offset as usize];
        match st {
            St::NotForGroup | St::Fresh => {
                return Err(format!("model: {what}: receipt for an undelivered message"));
            }
            St::Acked | St::Dead => ensure!(
                got == AckOutcome::AlreadyAcked,
                "{what}: message is {st:?}, expected AlreadyAcked, got {got:?}"
            ),
            St::DeadMaybe => match got {
                AckOutcome::AlreadyAcked => self.confirm_dead(g, r.offset)?,
                AckOutcome::LeaseLost => {}
                _ => {
                    return Err(format!(
                        "{what}: message used its last attempt before the reopen, expected AlreadyAcked or LeaseLost, got {got:?}"
                    ));
                }
            },
            St::Leased { attempt, .. }
            | St::Waiting {
                attempts: attempt, ..
            } if r.attempt != attempt => {
                ensure!(
                    r.attempt < attempt,
                    "model: receipt attempt {} above the current {attempt}",
                    r.attempt
                );
                ensure!(
                    got == AckOutcome::LeaseLost,
                    "{what}: stale receipt (current attempt {attempt}, state {st:?}), expected LeaseLost, got {got:?}"
                );
            }
            St::Leased { attempt, until } => {
                ensure!(
                    got == AckOutcome::Acked,
                    "{what}: current receipt, lease until {until} (now {}), expected Acked, got {got:?}",
                    self.now
                );
                match how {
                    Settle::Ack => {
                        self.st[g][r.offset as usize] = St::Acked;
                        self.acked_counted[g] += 1;
                    }
                    Settle::Nack { delay_ms, .. } if attempt < self.max_attempts => {
                        self.st[g][r.offset as usize] = St::Waiting {
                            attempts: attempt,
                            ready_at: self.now + delay_ms,
                            epoch: self.epoch,
                        };
                    }
                    Settle::Nack { reason, .. } | Settle::Reject { reason } => {
                        self.st[g][r.offset as usize] = St::Dead;
                        cover(Cov::DeadLetters);
                        self.dead.push(MDead {
                            group: g,
                            offset: r.offset,
                            attempts: attempt,
                            reason: reason.to_string(),
                            certain: true,
                            dead_offset: None,
                            dead_at: Some(self.now),
                            pending: true,
                        });
                    }
                }
            }
            St::Waiting { epoch, .. } => match how {
                Settle::Ack => {
                    // Not redelivered yet: the receipt is still the latest. After a reopen
                    // the engine may not know the message's state until its fetch scans it.
                    let ok = got == AckOutcome::Acked
                        || (epoch != self.epoch && got == AckOutcome::LeaseLost);
                    ensure!(
                        ok,
                        "{what}: latest receipt of a {st:?} message (epoch now {}), expected Acked, got {got:?}",
                        self.epoch
                    );
                    if got == AckOutcome::Acked {
                        self.st[g][r.offset as usize] = St::Acked;
                        self.acked_counted[g] += 1;
                    }
                }
                Settle::Nack { .. } | Settle::Reject { .. } => ensure!(
                    got == AckOutcome::LeaseLost,
                    "{what}: message is not leased ({st:?}), expected LeaseLost, got {got:?}"
                ),
            },
        }
        Ok(())
    }
}

struct Harness {
    b: crate::conformance::Harness,
    config: Config,
    m: Model,
    reason_seq: u64,
}

impl Harness {
    async fn new(backend: Backend, case: &Case) -> Result<Harness, String> {
        let clock = ManualClock::new(T0);
        let mut config = Config {
            max_attempts: case.max_attempts,
            in_flight_max: case.in_flight_max,
            ..test_config(&clock)
        };
        if backend.kind.has_engine() {
            config.segment_bytes_max = case.segment_bytes_max;
            config.dedup_entries_max = case.dedup_entries_max;
        }
        let b = backend.try_start(clock, config.clone(), true).await?;
        for g in GROUPS {
            b.q()
                .create_group(TOPIC, g, StartAt::Earliest)
                .await
                .map_err(|e| format!("create group {g}: {e}"))?;
        }
        let m = Model::new(&config, b.caps());
        Ok(Harness {
            b,
            config,
            m,
            reason_seq: 0,
        })
    }

    fn q(&self) -> Result<Arc<dyn Queue>, String> {
        Ok(self.b.q())
    }

    async fn step(&mut self, op: &Op) -> Check {
        match op {
            Op::Publish { id, due, header } => self.publish(&[(*id, *due, *header)], false).await,
            Op::Batch(msgs) => self.publish(msgs, true).await,
            Op::Fetch {
                consumer,
                max,
                lease_ms,
            } => self.fetch(*consumer, *max, *lease_ms).await,
            Op::Consume { consumer, max } => self.consume(*consumer, *max, None).await.map(drop),
            Op::Ack {
                consumer,
                picks,
                bogus,
            } => self.ack(*consumer, picks, *bogus).await,
            Op::Nack {
                consumer,
                pick,
                delay_ms,
            } => self.nack(*consumer, *pick, Some(*delay_ms)).await,
            Op::Reject { consumer, pick } => self.nack(*consumer, *pick, None).await,
            Op::Advance(ms) => {
                self.b.clock.advance(*ms);
                self.m.now += ms;
                Ok(())
            }
            Op::Tick => {
                self.b.tick().await.map_err(|e| format!("tick: {e}"))?;
                self.m.maintain();
                Ok(())
            }
            Op::ListDead => self.list_dead().await,
            Op::Replay(k) => self.resolve_dead(*k, true).await,
            Op::Discard(k) => self.resolve_dead(*k, false).await,
            Op::Reopen => self.reopen().await,
        }?;
        self.check_stats().await
    }

    async fn publish(&mut self, picks: &[(IdPick, DuePick, bool)], batch: bool) -> Check {
        let now = self.m.now;
        let mut messages = Vec::new();
        let mut expected = Vec::new();
        let mut fresh = Vec::new();
        let mut dedup = self.m.dedup.clone();
        let registered_before = dedup.len();
        let mut ids_used = self.m.ids_used.clone();
        let mut next_id = self.m.next_id;
        for &(id_pick, due_pick, header) in picks {
            let id = match id_pick {
                IdPick::NoId => None,
                IdPick::Repeat(k) if !ids_used.is_empty() => {
                    Some(ids_used[usize::from(k) % ids_used.len()])
                }
                IdPick::Fresh | IdPick::Repeat(_) => {
                    next_id += 1;
                    ids_used.push(next_id);
                    Some(next_id)
                }
            };
            let (due, due_ms) = match due_pick {
                DuePick::Now => (Due::Now, None),
                DuePick::After(d) => (Due::After(d), Some(now + d)),
                DuePick::At(delta) => {
                    let t = now.saturating_add_signed(delta);
                    (Due::At(t), Some(t))
                }
            };
            self.m.next_payload += 1;
            let payload = format!("payload-{}", self.m.next_payload).into_bytes();
            let headers = if header {
                vec![("n".to_string(), self.m.next_payload.to_le_bytes().to_vec())]
            } else {
                Vec::new()
            };
            let mut message = Message::new(payload.clone()).with_due(due);
            message.id = id;
            message.headers = headers.clone();
            messages.push(message);
            let known = id.and_then(|id| {
                let i = dedup.iter().rposition(|e| e.0 == id)?;
                let (_, off, at) = dedup[i];
                let remembered = i >= registered_before
                    || (at + self.m.dedup_window_ms > now
                        && registered_before - 1 - i < self.m.dedup_entries_max);
                remembered.then_some(off)
            });
            match known {
                Some(offset) => {
                    cover(Cov::Duplicates);
                    expected.push(Confirm {
                        offset,
                        duplicate: true,
                    });
                }
                None => {
                    let offset = self.m.next_offset() + fresh.len() as u64;
                    if let Some(id) = id {
                        dedup.push((id, offset, now));
                    }
                    expected.push(Confirm {
                        offset,
                        duplicate: false,
                    });
                    fresh.push(MMsg {
                        id,
                        payload,
                        headers,
                        due_ms,
                    });
                }
            }
        }
        let q = self.q()?;
        let got = if batch {
            q.publish_batch(TOPIC, messages).await
        } else {
            match messages.pop() {
                Some(m) => q.publish(TOPIC, m).await.map(|c| vec![c]),
                None => return Err("model: empty publish".into()),
            }
        }
        .map_err(|e| format!("publish: {e}"))?;
        ensure!(
            got == expected,
            "publish confirms {got:?}, expected {expected:?} (duplicates get the first copy's offset)"
        );
        self.m.dedup = dedup;
        self.m.ids_used = ids_used;
        self.m.next_id = next_id;
        for msg in fresh {
            self.m.msgs.push(msg);
            self.m.st[0].push(St::Fresh);
            self.m.st[1].push(St::Fresh);
        }
        Ok(())
    }

    async fn fetch(&mut self, consumer: usize, max: usize, lease_ms: Option<u64>) -> Check {
        let g = CONSUMER_GROUP[consumer];
        let now = self.m.now;
        self.m.maintain_for_fetch(g);
        let ready: Vec<u64> = (0..self.m.next_offset())
            .filter(|&off| self.m.ready(g, off))
            .collect();
        let in_flight = self.m.st[g]
            .iter()
            .filter(|st| matches!(st, St::Leased { .. }))
            .count();
        let got = self
            .q()?
            .fetch(
                TOPIC,
                GROUPS[g],
                FetchOptions {
                    max_messages: max,
                    lease_ms,
                    wait_ms: 0,
                },
            )
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        let lease_len = lease_ms.unwrap_or(self.config.lease_ms_default).max(1);
        let offs: Vec<(u64, u32)> = got.iter().map(|d| (d.offset, d.attempt)).collect();
        let mut seen = HashSet::new();
        for d in &got {
            let off = d.offset;
            ensure!(
                off < self.m.next_offset(),
                "fetch by {} delivered offset {off}, beyond the log",
                GROUPS[g]
            );
            ensure!(
                seen.insert(off),
                "fetch delivered offset {off} twice: {offs:?}"
            );
            let st = self.m.st[g][off as usize];
            let msg = &self.m.msgs[off as usize];
            let why = match st {
                St::NotForGroup => Some("a dead-letter replay meant for the other group".into()),
                St::Acked => Some("already acked".into()),
                St::Dead => Some("already dead-lettered".into()),
                St::DeadMaybe => Some(format!(
                    "its last lease used attempt {} of {} (it must go to the dead letters)",
                    self.m.max_attempts, self.m.max_attempts
                )),
                St::Leased { until, .. } if until > now => Some(format!(
                    "leased twice: an earlier lease is live until {until} (now {now})"
                )),
                St::Fresh if msg.due_ms.is_some_and(|d| d > now) => Some(format!(
                    "delivered before its due time {:?} (now {now})",
                    msg.due_ms
                )),
                St::Waiting { ready_at, .. } if ready_at > now => Some(format!(
                    "nacked retry delivered before {ready_at} (now {now})"
                )),
                _ => None,
            };
            if let Some(why) = why {
                return Err(format!(
                    "fetch by {} delivered offset {off} (attempt {}), which is {st:?}: {why}",
                    GROUPS[g], d.attempt
                ));
            }
            let msg_due = msg.due_ms;
            let expect_attempt = self.m.attempts(g, off) + 1;
            ensure!(
                d.attempt == expect_attempt,
                "offset {off} delivered to {} with attempt {}, expected {expect_attempt} (state {st:?})",
                GROUPS[g],
                d.attempt
            );
            ensure!(
                d.attempt <= self.m.max_attempts,
                "offset {off} delivered with attempt {} > max_attempts",
                d.attempt
            );
            ensure!(
                d.payload.as_ref() == msg.payload.as_slice(),
                "offset {off}: payload {:?}, expected {:?}",
                String::from_utf8_lossy(&d.payload),
                String::from_utf8_lossy(&msg.payload)
            );
            ensure!(
                d.id == msg.id && d.headers == msg.headers && d.due_ms == msg.due_ms,
                "offset {off}: id/headers/due {:?}/{:?}/{:?}, expected {:?}/{:?}/{:?}",
                d.id,
                d.headers,
                d.due_ms,
                msg.id,
                msg.headers,
                msg.due_ms
            );
            ensure!(
                d.lease_until_ms == now + lease_len,
                "offset {off}: lease until {}, expected {}",
                d.lease_until_ms,
                now + lease_len
            );
            self.m.st[g][off as usize] = St::Leased {
                attempt: d.attempt,
                until: d.lease_until_ms,
            };
            self.m.receipts[consumer].push(d.receipt());
            cover(Cov::Deliveries);
            if d.attempt > 1 {
                cover(Cov::Redeliveries);
            }
            if msg_due.is_some() {
                cover(Cov::DelayedDeliveries);
            }
        }
        // Fetch stops at `max` messages, or when the group has `in_flight_max` leases.
        let limit = max.min(self.config.in_flight_max.saturating_sub(in_flight));
        ensure!(
            got.len() == ready.len().min(limit),
            "fetch(max {max}, {in_flight} in flight) by {} returned {} messages {offs:?}, but {} are ready: {ready:?} (a confirmed message was lost or withheld)",
            GROUPS[g],
            got.len(),
            ready.len()
        );
        if got.len() < limit {
            // The fetch scanned to the end of the log: it dead-lettered every message that
            // used its last attempt before the reopen.
            for off in 0..self.m.next_offset() {
                if self.m.st[g][off as usize] == St::DeadMaybe {
                    self.m.confirm_dead(g, off)?;
                }
            }
        }
        Ok(())
    }

    /// Fetches and acks what was fetched; returns whether anything was.
    async fn consume(
        &mut self,
        consumer: usize,
        max: usize,
        lease_ms: Option<u64>,
    ) -> Result<bool, String> {
        let before = self.m.receipts[consumer].len();
        self.fetch(consumer, max, lease_ms).await?;
        let new: Vec<Receipt> = self.m.receipts[consumer][before..].to_vec();
        if new.is_empty() {
            return Ok(false);
        }
        let g = CONSUMER_GROUP[consumer];
        let got = self
            .q()?
            .ack(TOPIC, GROUPS[g], &new)
            .await
            .map_err(|e| format!("ack: {e}"))?;
        ensure!(
            got.len() == new.len(),
            "ack of {} receipts returned {} outcomes",
            new.len(),
            got.len()
        );
        for (r, o) in new.iter().zip(got) {
            self.m.settle(g, *r, Settle::Ack, o)?;
        }
        Ok(true)
    }

    fn pick(&self, consumer: usize, pick: u8) -> Option<Receipt> {
        let rs = &self.m.receipts[consumer];
        (!rs.is_empty()).then(|| rs[usize::from(pick) % rs.len()])
    }

    async fn ack(&mut self, consumer: usize, picks: &[u8], bogus: bool) -> Check {
        let g = CONSUMER_GROUP[consumer];
        let mut receipts: Vec<Receipt> = picks
            .iter()
            .filter_map(|&p| self.pick(consumer, p))
            .collect();
        if bogus {
            receipts.push(Receipt {
                offset: self.m.next_offset() + 3,
                attempt: 1,
            });
        }
        if receipts.is_empty() {
            return Ok(());
        }
        let got = self
            .q()?
            .ack(TOPIC, GROUPS[g], &receipts)
            .await
            .map_err(|e| format!("ack: {e}"))?;
        ensure!(
            got.len() == receipts.len(),
            "ack of {} receipts returned {} outcomes",
            receipts.len(),
            got.len()
        );
        for (r, o) in receipts.iter().zip(got) {
            self.m.settle(g, *r, Settle::Ack, o)?;
        }
        Ok(())
    }

    /// Nack with `delay_ms`, or reject when `None`.
    async fn nack(&mut self, consumer: usize, pick: u8, delay_ms: Option<u64>) -> Check {
        let g = CONSUMER_GROUP[consumer];
        let Some(r) = self.pick(consumer, pick) else {
            return Ok(());
        };
        self.reason_seq += 1;
        let q = self.q()?;
        let (reason, how) = match delay_ms {
            Some(delay_ms) => (format!("nack-{}", self.reason_seq), Some(delay_ms)),
            None => (format!("reject-{}", self.reason_seq), None),
        };
        let got = match how {
            Some(delay_ms) => q.nack(TOPIC, GROUPS[g], r, delay_ms, &reason).await,
            None => q.reject(TOPIC, GROUPS[g], r, &reason).await,
        }
        .map_err(|e| format!("nack/reject: {e}"))?;
        let how = match how {
            Some(delay_ms) => Settle::Nack {
                delay_ms,
                reason: &reason,
            },
            None => Settle::Reject { reason: &reason },
        };
        self.m.settle(g, r, how, got)
    }

    async fn list_dead(&mut self) -> Check {
        let list = self
            .q()?
            .dead_letters(TOPIC, 0, 1000)
            .await
            .map_err(|e| format!("dead_letters: {e}"))?;
        let mut listed = HashSet::new();
        let mut last: Option<u64> = None;
        for dl in &list {
            ensure!(
                last.is_none_or(|l| l < dl.dead_offset),
                "dead letters not in offset order: {:?} then {}",
                last,
                dl.dead_offset
            );
            last = Some(dl.dead_offset);
            let g = GROUPS
                .iter()
                .position(|n| *n == dl.group)
                .ok_or_else(|| format!("dead letter for unknown group {:?}", dl.group))?;
            let off = dl.original_offset;
            let now = self.m.now;
            let i = self
                .m
                .dead
                .iter()
                .position(|d| d.group == g && d.offset == off && d.pending)
                .ok_or_else(|| {
                    format!(
                        "unexpected dead letter {dl:?}: the model has no pending dead letter for {} offset {off} (state {:?})",
                        dl.group,
                        self.m.st[g].get(off as usize)
                    )
                })?;
            let e = self.m.dead[i].clone();
            ensure!(
                dl.attempts == e.attempts && dl.reason == e.reason,
                "dead letter {} offset {off}: attempts {} reason {:?}, expected {} {:?}",
                dl.group,
                dl.attempts,
                dl.reason,
                e.attempts,
                e.reason
            );
            let msg = &self.m.msgs[off as usize];
            ensure!(
                dl.payload.as_ref() == msg.payload.as_slice()
                    && dl.id == msg.id
                    && dl.headers == msg.headers,
                "dead letter {} offset {off}: message {:?}/{:?}/{:?}, expected {:?}/{:?}/{:?}",
                dl.group,
                dl.id,
                dl.headers,
                String::from_utf8_lossy(&dl.payload),
                msg.id,
                msg.headers,
                String::from_utf8_lossy(&msg.payload)
            );
            ensure!(
                e.dead_at.is_none_or(|t| t == dl.dead_at_ms) && dl.dead_at_ms <= now,
                "dead letter {} offset {off}: dead at {}, expected {:?} (now {now})",
                dl.group,
                dl.dead_at_ms,
                e.dead_at
            );
            ensure!(
                e.dead_offset.is_none_or(|d| d == dl.dead_offset),
                "dead letter {} offset {off} moved from dead offset {:?} to {}",
                dl.group,
                e.dead_offset,
                dl.dead_offset
            );
            ensure!(
                !self
                    .m
                    .dead
                    .iter()
                    .enumerate()
                    .any(|(j, d)| j != i && d.dead_offset == Some(dl.dead_offset)),
                "dead offset {} names two dead letters",
                dl.dead_offset
            );
            if !e.certain {
                self.m.confirm_dead(g, off)?;
            }
            let e = &mut self.m.dead[i];
            e.dead_offset = Some(dl.dead_offset);
            e.dead_at = Some(dl.dead_at_ms);
            listed.insert(i);
        }
        for (i, d) in self.m.dead.iter().enumerate() {
            ensure!(
                !(d.pending && d.certain) || listed.contains(&i),
                "dead letter missing from the list: {d:?}"
            );
        }
        Ok(())
    }

    /// Replays (or discards) a listed dead letter; sometimes one already resolved, which
    /// must fail with `NoSuchDeadLetter`.
    async fn resolve_dead(&mut self, k: u8, replay: bool) -> Check {
        if !self
            .m
            .dead
            .iter()
            .any(|d| d.pending && d.dead_offset.is_some())
        {
            // Learn the dead offsets first.
            self.list_dead().await?;
        }
        let pending: Vec<usize> = (0..self.m.dead.len())
            .filter(|&i| self.m.dead[i].pending && self.m.dead[i].dead_offset.is_some())
            .collect();
        let resolved: Vec<u64> = self
            .m
            .dead
            .iter()
            .filter(|d| !d.pending)
            .filter_map(|d| d.dead_offset)
            .collect();
        let q = self.q()?;
        if k.is_multiple_of(5) && !resolved.is_empty() || pending.is_empty() {
            let Some(&dead_offset) = resolved.get(usize::from(k) % resolved.len().max(1)) else {
                return Ok(());
            };
            let r = if replay {
                q.replay_dead_letter(TOPIC, dead_offset).await.map(|_| ())
            } else {
                q.discard_dead_letter(TOPIC, dead_offset).await
            };
            ensure!(
                matches!(r, Err(Error::NoSuchDeadLetter { .. })),
                "replay/discard of resolved dead letter {dead_offset}: expected NoSuchDeadLetter, got {r:?}"
            );
            return Ok(());
        }
        let i = pending[usize::from(k) % pending.len()];
        let e = self.m.dead[i].clone();
        let dead_offset = e
            .dead_offset
            .ok_or_else(|| "model: no dead offset".to_string())?;
        if replay {
            let off = q
                .replay_dead_letter(TOPIC, dead_offset)
                .await
                .map_err(|err| format!("replay {e:?}: {err}"))?;
            ensure!(
                off == self.m.next_offset(),
                "replay of {e:?} got offset {off}, expected {}",
                self.m.next_offset()
            );
            let orig = self.m.msgs[e.offset as usize].clone();
            self.m.msgs.push(MMsg {
                due_ms: None,
                ..orig
            });
            for g in 0..2 {
                self.m.st[g].push(if g == e.group {
                    St::Fresh
                } else {
                    St::NotForGroup
                });
            }
        } else {
            q.discard_dead_letter(TOPIC, dead_offset)
                .await
                .map_err(|err| format!("discard {e:?}: {err}"))?;
        }
        self.m.dead[i].pending = false;
        if replay {
            cover(Cov::Replays);
        }
        Ok(())
    }

    async fn reopen(&mut self) -> Check {
        if self
            .q()?
            .stats(TOPIC)
            .await
            .map_err(|e| format!("stats: {e}"))?
            .log_start
            > 0
        {
            cover(Cov::ReopensAfterRetention);
        }
        self.b.restart().await.map_err(|e| format!("reopen: {e}"))?;
        if let Some(engine) = self.b.engine() {
            for (topic, report) in engine.recovery_reports() {
                ensure!(
                    *report == queue::RecoveryReport::default(),
                    "recovery after a clean close changed topic {topic}: {report:?}"
                );
            }
        }
        self.m.reopened();
        cover(Cov::Reopens);
        Ok(())
    }

    /// Figures the engine reports that the model knows exactly.
    async fn check_stats(&self) -> Check {
        let s = self
            .q()?
            .stats(TOPIC)
            .await
            .map_err(|e| format!("stats: {e}"))?;
        let n = self.m.next_offset();
        ensure!(
            s.next_offset == n && s.durable_end == n,
            "stats: next_offset {} durable_end {}, expected {n}",
            s.next_offset,
            s.durable_end
        );
        for (g, name) in GROUPS.iter().enumerate() {
            let gs = s
                .groups
                .iter()
                .find(|x| x.name == *name)
                .ok_or_else(|| format!("stats: no group {name}"))?;
            let leased = self.m.st[g]
                .iter()
                .filter(|st| matches!(st, St::Leased { .. }))
                .count() as u64;
            ensure!(
                gs.in_flight == leased && gs.acked == self.m.acked_counted[g],
                "stats of {name}: in_flight {} acked {}, expected {leased} {}",
                gs.in_flight,
                gs.acked,
                self.m.acked_counted[g]
            );
        }
        let certain = self
            .m
            .dead
            .iter()
            .filter(|d| d.pending && d.certain)
            .count() as u64;
        let maybe = self
            .m
            .dead
            .iter()
            .filter(|d| d.pending && !d.certain)
            .count() as u64;
        ensure!(
            (certain..=certain + maybe).contains(&s.dead_letters_pending),
            "stats: {} dead letters pending, expected {certain} (+ up to {maybe} not yet moved)",
            s.dead_letters_pending
        );
        Ok(())
    }

    /// Lets all time pass, drains both groups, and checks that every message ended acked
    /// or dead-lettered, also after a reopen.
    async fn finish(&mut self) -> Check {
        self.step(&Op::Advance(1_000_000)).await?;
        for round in 0.. {
            // Each round takes at least one message (up to `in_flight_max`) per group.
            ensure!(round <= self.m.msgs.len() + 2, "drain did not finish");
            let mut any = false;
            for consumer in [0, 2] {
                any |= self.consume(consumer, 1000, Some(60_000)).await?;
            }
            self.check_stats().await?;
            if !any {
                break;
            }
        }
        self.list_dead().await?;
        for (name, sts) in GROUPS.iter().zip(&self.m.st) {
            for (off, st) in sts.iter().enumerate() {
                ensure!(
                    matches!(st, St::Acked | St::Dead | St::NotForGroup),
                    "after draining, offset {off} of {name} is {st:?}"
                );
            }
        }
        self.check_final_stats().await?;
        self.reopen().await?;
        for consumer in [0, 2] {
            self.fetch(consumer, 1000, None).await?;
        }
        self.list_dead().await?;
        self.check_final_stats().await?;
        self.b.close().map_err(|e| format!("close: {e}"))
    }

    async fn check_final_stats(&self) -> Check {
        self.check_stats().await?;
        let s = self
            .q()?
            .stats(TOPIC)
            .await
            .map_err(|e| format!("stats: {e}"))?;
        ensure!(s.delayed_pending == 0, "stats: delayed pending {s:?}");
        for gs in &s.groups {
            ensure!(
                gs.lag == 0 && gs.depth == 0 && gs.in_flight == 0 && gs.retry_waiting == 0,
                "stats after draining: {gs:?}"
            );
        }
        Ok(())
    }
}

/// Opens the engine again after `close` and drop.
///
/// Retries while the directory lock is busy: another test in this binary (crash.rs) spawns
/// child processes, and until such a child calls exec it holds copies of this process's
/// descriptors, the closed lock file's among them, and with it the lock. Waiting for that
/// is about the OS, not queue time, so it spins on the wall clock instead of the
/// `ManualClock`.
fn reopen_engine(dir: &std::path::Path, config: &Config) -> queue::Result<Engine> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Engine::open(dir, config.clone()) {
            Err(Error::Io { op, .. })
                if op.starts_with("lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            result => return result,
        }
    }
}

async fn run_case(backend: Backend, case: &Case) -> Check {
    let mut h = Harness::new(backend, case).await?;
    for (i, op) in case.ops.iter().enumerate() {
        h.step(op)
            .await
            .map_err(|e| format!("op #{i} {op:?} (now T0+{}): {e}", h.m.now - T0))?;
    }
    h.finish()
        .await
        .map_err(|e| format!("final drain (now T0+{}): {e}", h.m.now - T0))
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// Cases per run when `QUEUE_MODEL_CASES` is not set. The engine keeps its 96; the others
/// take what runs in 10 to 30 s on a small shared 2-core machine (a Redis case costs a few
/// times an engine case: every operation is a script round trip and every write an fsync;
/// the cluster's restarts reconnect to six nodes and its start takes 3 to 5 s).
fn cases_default(kind: Kind) -> u32 {
    match kind {
        Kind::Embedded | Kind::Broker => 96,
        Kind::RedisStandalone => 192,
        Kind::RedisCluster => 64,
    }
}

/// Runs the model test against `kind` (skipped, with a message, when the backend's servers
/// cannot be started outside CI).
fn model_test(kind: Kind) {
    let Some(backend) = Backend::get(kind) else {
        return;
    };
    let cases = env_u64("QUEUE_MODEL_CASES").map_or(cases_default(kind), |n| n as u32);
    let ops_max = env_u64("QUEUE_MODEL_OPS").map_or(60, |n| n as usize);
    let seed = env_u64("QUEUE_MODEL_SEED").unwrap_or_else(rand::random);
    let config = PtConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..PtConfig::default()
    };
    COVERAGE.with_borrow_mut(|cov| *cov = [0; 11]);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(ops_max), |case| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(run_case(backend, &case))
            .map_err(TestCaseError::fail)
    });
    let summary: Vec<String> = COVERAGE.with_borrow(|cov| {
        COVERAGE_NAMES
            .iter()
            .zip(cov)
            .map(|(n, c)| format!("{n} {c}"))
            .collect()
    });
    eprintln!(
        "model test ({kind:?}): seed {seed}, {cases} cases: {}",
        summary.join(", ")
    );
    if let Err(e) = result {
        panic!(
            "{e}\n\nmodel test ({kind:?}) failed; rerun with QUEUE_MODEL_SEED={seed} QUEUE_MODEL_CASES={cases} QUEUE_MODEL_OPS={ops_max}"
        );
    }
}

#[test]
fn engine_matches_model() {
    model_test(Kind::Embedded);
}

#[test]
fn broker_matches_model() {
    model_test(Kind::Broker);
}

#[test]
fn redis_standalone_matches_model() {
    model_test(Kind::RedisStandalone);
}

#[test]
fn redis_cluster_matches_model() {
    model_test(Kind::RedisCluster);
}

/// Found by the model: retention deleted a segment whose producer ids were still in the
/// de-duplication window, so after a restart a repeated id was stored again.
#[tokio::test]
async fn dedup_window_survives_retention_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = Config {
        segment_bytes_max: 300,
        ..test_config(&clock)
    };
    let q = Engine::open(dir.path(), config.clone()).expect("open");
    q.create_group(TOPIC, "g", StartAt::Earliest)
        .await
        .expect("group");
    let first = q
        .publish(TOPIC, Message::new("a").with_id(1))
        .await
        .expect("publish");
    for i in 0..10u8 {
        q.publish(TOPIC, Message::new(vec![i; 50]))
            .await
            .expect("publish");
    }
    let opts = FetchOptions {
        max_messages: 100,
        lease_ms: None,
        wait_ms: 0,
    };
    let d = q.fetch(TOPIC, "g", opts).await.expect("fetch");
    let r: Vec<_> = d.iter().map(|d| d.receipt()).collect();
    q.ack(TOPIC, "g", &r).await.expect("ack");
    q.tick().await.expect("tick");
    q.close().expect("close");
    drop(q);
    let q = reopen_engine(dir.path(), &config).expect("open");
    let again = q
        .publish(TOPIC, Message::new("a").with_id(1))
        .await
        .expect("publish");
    assert_eq!(
        again,
        Confirm {
            offset: first.offset,
            duplicate: true
        }
    );
    // Once the window has passed, retention deletes the segment after all.
    clock.advance(config.dedup_window_ms);
    q.tick().await.expect("tick");
    let st = q.stats(TOPIC).await.expect("stats");
    assert!(st.log_start > first.offset, "{st:?}");
}
