//! What a long poll does while real time passes: a nacked retry, a delayed message and an
//! expired lease are each delivered within the wait, never before their time. These run on
//! the real clock (the engine's system clock, the Redis server's `TIME`), with short real
//! durations, measured with `Instant`.

use std::time::{Duration, Instant};

use queue::{AckOutcome, Due, Message, StartAt};

use super::{Backend, opts};

/// The clocks count whole ms; the tests measure with `Instant`. A due time computed from a
/// truncated reading can fall up to 1 ms before the exact one, so "not before the delay" is
/// checked with this much slack.
const CLOCK_SLACK_MS: u64 = 2;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The real-clock harness: background maintenance every 20 ms where the backend has it
/// (the engine; Redis maintains in every fetch).
async fn start(b: Backend) -> super::Harness {
    b.start_real_clock(|c| c.maintenance_interval_ms = Some(20))
        .await
}

pub async fn nack_with_delay_is_redelivered_as_attempt_2_not_before_the_delay(b: Backend) {
    const DELAY_MS: u64 = 300;
    let h = start(b).await;
    let c = h.q();
    c.publish("jobs", Message::new("retry me").with_id(5))
        .await
        .expect("publish");
    let d = c
        .fetch("jobs", "w", opts(1, 30_000, 0))
        .await
        .expect("fetch");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempt, 1);

    let nacked_at = Instant::now();
    let outcome = c
        .nack("jobs", "w", d[0].receipt(), DELAY_MS, "try later")
        .await
        .expect("nack");
    assert_eq!(outcome, AckOutcome::Acked);
    let early = c
        .fetch("jobs", "w", opts(1, 30_000, 0))
        .await
        .expect("fetch");
    if nacked_at.elapsed() < Duration::from_millis(DELAY_MS - CLOCK_SLACK_MS) {
        assert!(early.is_empty(), "redelivered before the delay: {early:?}");
    }
    let again = c
        .fetch("jobs", "w", opts(1, 30_000, 5_000))
        .await
        .expect("fetch");
    let waited = nacked_at.elapsed();
    assert_eq!(again.len(), 1, "redelivered within the wait");
    assert_eq!((again[0].offset, again[0].attempt), (0, 2));
    assert_eq!(again[0].id, Some(5));
    assert!(
        ms(waited) >= DELAY_MS - CLOCK_SLACK_MS,
        "redelivered after {waited:?}, before the {DELAY_MS} ms delay"
    );
    // The first attempt's receipt is stale now.
    let stale = c.ack("jobs", "w", &[d[0].receipt()]).await.expect("ack");
    assert_eq!(stale, vec![AckOutcome::LeaseLost]);
    let ok = c
        .ack("jobs", "w", &[again[0].receipt()])
        .await
        .expect("ack");
    assert_eq!(ok, vec![AckOutcome::Acked]);
}

pub async fn delayed_message_is_not_delivered_early(b: Backend) {
    const DELAY_MS: u64 = 300;
    let h = start(b).await;
    let c = h.q();
    c.create_group("later", "g", StartAt::Earliest)
        .await
        .expect("group");
    let published_at = Instant::now();
    c.publish(
        "later",
        Message::new("not yet").with_due(Due::After(DELAY_MS)),
    )
    .await
    .expect("publish");
    let stats = c.stats("later").await.expect("stats");
    let none = c
        .fetch("later", "g", opts(1, 30_000, 0))
        .await
        .expect("fetch");
    if published_at.elapsed() < Duration::from_millis(DELAY_MS - CLOCK_SLACK_MS) {
        assert_eq!(stats.delayed_pending, 1, "{stats:?}");
        assert!(none.is_empty(), "delivered early: {none:?}");
    }
    let got = c
        .fetch("later", "g", opts(1, 30_000, 5_000))
        .await
        .expect("fetch");
    let waited = published_at.elapsed();
    assert_eq!(got.len(), 1, "delivered within the wait");
    assert_eq!(got[0].payload.as_ref(), b"not yet");
    assert!(
        got[0].due_ms.is_some(),
        "a delayed delivery names its due time"
    );
    assert!(
        ms(waited) >= DELAY_MS - CLOCK_SLACK_MS,
        "delivered after {waited:?}, before the {DELAY_MS} ms delay"
    );
}

pub async fn expired_lease_is_redelivered_as_attempt_2(b: Backend) {
    const LEASE_MS: u64 = 200;
    let h = start(b).await;
    let c = h.q();
    c.publish("leases", Message::new("forgotten"))
        .await
        .expect("publish");
    let leased_at = Instant::now();
    let first = c
        .fetch("leases", "g", opts(1, LEASE_MS, 0))
        .await
        .expect("fetch");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    // Not acked. The next fetch waits for the lease to run out.
    let second = c
        .fetch("leases", "g", opts(1, 30_000, 5_000))
        .await
        .expect("fetch");
    let waited = leased_at.elapsed();
    assert_eq!(second.len(), 1, "redelivered within the wait");
    assert_eq!((second[0].offset, second[0].attempt), (0, 2));
    assert!(
        ms(waited) >= LEASE_MS - CLOCK_SLACK_MS,
        "redelivered after {waited:?}, inside the {LEASE_MS} ms lease"
    );
    let stats = c.stats("leases").await.expect("stats");
    assert_eq!(stats.groups[0].redeliveries, 1, "{stats:?}");
}
