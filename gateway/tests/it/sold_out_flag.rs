//! The sold-out flag kept from lapsing by the housekeeping round (`sync::housekeeping`
//! renews it from the store's figures): while a sale stays sold out it is refused from
//! memory however long that lasts, not only for `sold_out_recheck` after the last
//! reservation that reached the store; and a unit released elsewhere (straight in the
//! store, as another gateway would) clears it at the next round.

use std::time::{Duration, Instant};

use inventory::Reservation;

use super::{TestApp, test_throttle};

async fn sold_out_sale(t: &TestApp, id: u64) {
    t.create_sale(id, 1, 0).await;
    let r = t.state.inventory.reserve(id, "amy").await.expect("reserve");
    assert_eq!(r, Reservation::Reserved { left: 0 });
    assert!(
        t.state.inventory.flagged_sold_out(id),
        "the last unit sets the flag"
    );
}

#[tokio::test]
async fn housekeeping_keeps_a_sold_out_flag_on_past_its_recheck_period() {
    let t = super::test_app(100.0, test_throttle()).await;
    let inv = &t.state.inventory;
    sold_out_sale(&t, 71).await;
    gateway::sync::housekeeping(&t.state).await;
    // Without the round's renewal the flag set by the reservation lapses after the recheck
    // period (200 ms here); renewed, it holds for that plus a round.
    let renewed = Instant::now();
    while renewed.elapsed() < inv.recheck() * 2 {
        assert!(
            inv.flagged_sold_out(71),
            "the flag lapsed {:?} after the round",
            renewed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A sale with units left is not flagged by the round.
    t.create_sale(72, 5, 0).await;
    gateway::sync::housekeeping(&t.state).await;
    assert!(!inv.flagged_sold_out(72));
}

#[tokio::test]
async fn a_unit_released_elsewhere_clears_the_flag_at_the_next_round() {
    let t = super::test_app(100.0, test_throttle()).await;
    let inv = &t.state.inventory;
    sold_out_sale(&t, 73).await;
    // Released straight in the store, not through this gateway's inventory: the flag does
    // not know yet.
    inv.store()
        .release(73, "amy")
        .await
        .expect("release elsewhere");
    assert!(inv.flagged_sold_out(73));
    gateway::sync::housekeeping(&t.state).await;
    assert!(!inv.flagged_sold_out(73), "the round saw the unit back");
    let r = inv.reserve(73, "bob").await.expect("reserve");
    assert_eq!(r, Reservation::Reserved { left: 0 });
}
