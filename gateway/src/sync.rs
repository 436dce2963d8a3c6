//! Keeping the gateway's copies in step with the orders database: the sale catalogue, the
//! stock store's figures for each sale, and the waiting tickets.
//!
//! - **Catalogue**: re-read from the database every housekeeping round; a sale new to this
//!   gateway gets its stock defined if the store has none (from the units on sale and the
//!   users holding an active order), which is also what a restart with an in-process store
//!   does for every sale. A sale whose units an operator edited (before its start) has its
//!   stock re-put from the new units; a pause or an early end needs nothing of the store:
//!   the catalogue's copy refuses the purchases.
//! - **Tickets**: the workers' group progress on the orders topic is read each round, per
//!   partition when the topic has several ([`crate::tickets::Done`]); tickets below their
//!   partition's mark are finished and leave the book: decided (their outcomes are in the
//!   database) or dead-lettered. The orders topic's dead letters are listed each round (after the
//!   progress, so a ticket never leaves the book unseen) and their tickets answer `held`
//!   until an operator replays or discards them.
//! - **Stock that vanished** (a Redis restarted without persistence, flushed or evicting):
//!   a sale in the catalogue without stock figures in the store is reset from the database
//!   at the next reconciliation check, whatever the queue is doing (the database never
//!   oversells; the check at rest corrects what was queued meanwhile).
//! - **Reconciliation at rest** ([`Reconciler`](crate::state::Reconciler)): every
//!   [`RECONCILE_EVERY_ROUNDS`] rounds, when the orders topic is drained (workers' lag 0)
//!   and no purchase of this gateway is between its reservation and its enqueue, each sale's
//!   store figures are compared with the database: units left, and holders against the
//!   active orders plus the purchases in the orders topic's dead letters that no worker
//!   decided (no outcome in the database). Such a purchase keeps the unit its gateway
//!   reserved until an operator replays it (it may still become an order) or discards it, so
//!   the comparison and a reset count it as a holder (its user, tagged with its ticket). A
//!   dead-lettered purchase that was decided holds nothing beyond its order: dead letters do
//!   not stop the check, since a decided purchase dead-lettered because its pay-by message
//!   could not be confirmed (a queue partition's master lost with its only replica) would
//!   otherwise stop it for good. If the dead letters cannot all be known (the listing or an
//!   outcome lookup fails, or the listing may be cut short at
//!   [`queue::limits::DEAD_LETTER_LIST_MAX`]), the check waits for a later round. A sale
//!   that differs with the same store figures in two rounds in a row (nothing moved in
//!   between) is reset to the database's truth. That settles what a crash or a split
//!   deployment leaves behind: a reservation whose enqueue never happened (also one a
//!   gateway killed mid-walk left pending in a bucketed Redis store), a unit whose release
//!   was lost, an in-process store restarted while purchases were queued. Invariant 4
//!   (conservation) therefore holds in the store again within two rounds of the queue going
//!   quiet. The residual risk: another gateway's purchase reserving between the second look
//!   and the reset; its order is still decided by the database, which never oversells.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use inventory::SaleStock;

use crate::state::AppState;
use crate::tickets::Done;

/// Housekeeping rounds (one a second) between reconciliation checks.
pub const RECONCILE_EVERY_ROUNDS: u64 = 10;

use crate::state::Held;

/// Why a sync step with the database and the stock store failed; its text is the
/// underlying error's (or `no sale N`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The orders database.
    #[error(transparent)]
    Db(#[from] order_worker::DbError),
    /// The stock store.
    #[error(transparent)]
    Stock(#[from] inventory::Error),
    /// The database has no such sale.
    #[error("no sale {0}")]
    NoSuchSale(u64),
}

/// A sync step that failed answers 503 (the database or the store could not answer).
impl From<SyncError> for crate::error::ApiError {
    fn from(e: SyncError) -> Self {
        crate::error::ApiError::unavailable_from(e)
    }
}

/// Reads the database's sales into the catalogue, defining the stock of sales new to this
/// gateway that the store does not hold yet. Returns how many sales were new.
pub async fn load_catalogue(state: &AppState) -> Result<usize, SyncError> {
    let sales = state.db.sales().await?;
    let mut new = 0;
    for sale in sales {
        let known = state.catalogue.get(sale.id);
        if let Some(old) = &known
            && old.units != sale.units
            && state
                .inventory
                .store()
                .stock(sale.id)
                .await?
                .is_none_or(|s| s.units != sale.units)
        {
            // Edited before its start through some gateway (`SaleChange`): the units are
            // re-put here too, so an in-process store follows (a shared Redis store already
            // holds the new units and is left alone).
            let holders = state.db.active_holder_tags(sale.id).await?;
            state
                .inventory
                .reconcile_bucketed(sale.id, sale.units, sale.stock_buckets, &holders)
                .await?;
        }
        if known.is_none() {
            let stock = state.inventory.store().stock(sale.id).await?;
            if stock.is_none() {
                let holders = state.db.active_holder_tags(sale.id).await?;
                state
                    .inventory
                    .reconcile_bucketed(sale.id, sale.units, sale.stock_buckets, &holders)
                    .await?;
            }
            new += 1;
        }
        state.catalogue.upsert(sale);
    }
    Ok(new)
}

/// Resets `sale`'s stock to the database: its units, held by the users with an active
/// order. Returns the new figures.
pub async fn reconcile_sale(state: &AppState, sale: u64) -> Result<SaleStock, SyncError> {
    let Some(s) = state.db.sale(sale).await? else {
        return Err(SyncError::NoSuchSale(sale));
    };
    let holders = state.db.active_holder_tags(sale).await?;
    let stock = state
        .inventory
        .reconcile_bucketed(sale, s.units, s.stock_buckets, &holders)
        .await?;
    state.reconciler.resets.fetch_add(1, Ordering::Relaxed);
    Ok(stock)
}

/// What keeps a sale from being at rest (see [`sale_at_rest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unsettled {
    /// Purchases of the orders topic not yet decided by the workers (any sale: the topic
    /// does not say whose they are); `None` if the queue could not say.
    pub queued: Option<u64>,
    /// Purchases of this gateway between their reservation and their enqueue.
    pub running: usize,
    /// Purchases of this sale in the orders topic's dead letters (each keeps its unit).
    pub held: usize,
}

impl Unsettled {
    /// Whether nothing is queued, running or held: the sale is at rest.
    pub fn at_rest(&self) -> bool {
        self.queued == Some(0) && self.running == 0 && self.held == 0
    }
}

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.queued {
            Some(q) => write!(f, "{q} purchases queued")?,
            None => write!(f, "the queue's progress is unknown")?,
        }
        write!(
            f,
            ", {} being enqueued here, {} of this sale in the dead letters",
            self.running, self.held
        )
    }
}

/// Whether `sale` is at rest, as the automatic reconciliation judges it (see the module
/// documentation): the orders topic drained (the workers' lag 0, for every sale, since a
/// queued purchase does not say its sale until read), no purchase of this gateway between
/// its reservation and its enqueue, and none of this sale's purchases in the dead letters.
/// Another gateway's purchase between its reservation and its enqueue cannot be seen from
/// here; its order is still decided by the database, which never oversells.
pub async fn sale_at_rest(state: &AppState, sale: u64) -> Unsettled {
    let running = state.commits.running();
    let p = progress(state).await;
    let mut held = 0;
    if p.as_ref().is_some_and(|p| p.dead_pending > 0) {
        refresh_held(state).await;
        held = state.held.count_of_sale(sale);
    }
    Unsettled {
        queued: p.map(|p| p.lag),
        running,
        held,
    }
}

/// Where the workers stand on the orders topic.
#[derive(Debug, Clone)]
struct Progress {
    /// Messages not finished by the workers.
    lag: u64,
    /// What is finished (decided or dead-lettered), per partition.
    done: Done,
    /// Dead letters waiting for an operator.
    dead_pending: u64,
}

/// The workers' progress; `None` if the queue cannot say. Without a workers' group yet,
/// everything published is lag; without an orders topic yet, nothing is.
async fn progress(state: &AppState) -> Option<Progress> {
    let stats = match state.queue.stats(&state.config.orders_topic).await {
        Ok(s) => s,
        Err(queue::Error::NoSuchTopic(_)) => {
            return Some(Progress {
                lag: 0,
                done: Done::default(),
                dead_pending: 0,
            });
        }
        Err(e) => {
            tracing::warn!("reading the workers' progress: {e}");
            return None;
        }
    };
    let lag = match stats
        .groups
        .iter()
        .find(|g| g.name == state.config.workers_group)
    {
        Some(g) => g.lag,
        None => stats.next_offset.saturating_sub(stats.log_start),
    };
    Some(Progress {
        lag,
        done: Done::of_topic(&stats, &state.config.workers_group),
        dead_pending: stats.dead_letters_pending,
    })
}

/// Lists the orders topic's dead letters into [`AppState::held`]. Returns their purchases
/// when the listing is known to hold them all: `None` when it failed or may be cut short
/// (as many letters as one listing shows).
async fn refresh_held(state: &AppState) -> Option<Vec<order_worker::PurchaseMessage>> {
    let limit = queue::limits::DEAD_LETTER_LIST_MAX;
    let letters = match state
        .queue
        .dead_letters(&state.config.orders_topic, 0, limit)
        .await
    {
        Ok(l) => l,
        Err(queue::Error::NoSuchTopic(_)) => Vec::new(),
        Err(e) => {
            tracing::warn!("listing the orders' dead letters: {e}");
            return None;
        }
    };
    let complete = letters.len() < limit;
    let mut held = HashMap::with_capacity(letters.len());
    let mut purchases = Vec::with_capacity(letters.len());
    for d in letters {
        // A payload that is no purchase message names no reservation (the gateway never
        // publishes one): it holds no unit and no ticket.
        let Ok(p) = order_worker::PurchaseMessage::decode(&d.payload) else {
            continue;
        };
        held.insert(
            p.ticket.clone(),
            Held {
                sale: p.sale,
                reason: d.reason,
            },
        );
        purchases.push(p);
    }
    state.held.replace(held);
    complete.then_some(purchases)
}

/// One housekeeping round (the gateway's `serve` runs one a second).
pub async fn housekeeping(state: &AppState) {
    // First, so that a slow database does not let a flag lapse.
    refresh_sold_out_flags(state).await;
    if let Err(e) = load_catalogue(state).await {
        tracing::warn!("reading the sales from the database: {e}");
    }
    // The progress first, then the dead letters: a purchase dead-lettered before the
    // progress was read is in the listing, so its ticket never leaves the book unseen.
    let p = progress(state).await;
    let mut dead = None;
    if let Some(p) = &p {
        if p.dead_pending > 0 {
            dead = refresh_held(state).await;
        } else {
            state.held.replace(HashMap::new());
            dead = Some(Vec::new());
        }
        state.line.advance(&p.done);
        state.tickets.finished_below(&p.done);
    }
    let round = state.reconciler.rounds.fetch_add(1, Ordering::Relaxed) + 1;
    if round.is_multiple_of(RECONCILE_EVERY_ROUNDS) {
        reconcile(state, p, dead).await;
    }
}

/// The sold-out flags renewed (or cleared) from the store's figures, one stock read per sale
/// of the catalogue: a sold-out sale stays refused from memory for as long as it stays sold
/// out, instead of its flag lapsing every `sold_out_recheck` and letting every attempt go on
/// towards the store until one gets there (a flood of attempts refused for their session
/// or token never does: each would cost the whole purchase path's checks). A unit another
/// gateway released is seen here within a round. The flag is held for `sold_out_recheck`
/// plus a round, so it does not lapse between two rounds.
async fn refresh_sold_out_flags(state: &AppState) {
    let hold = state.inventory.recheck() + crate::front::HOUSEKEEPING_PERIOD;
    for sale in state.catalogue.list() {
        if let Err(e) = state.inventory.refresh_sold_out(sale.id, hold).await {
            tracing::warn!(
                sale = sale.id,
                "reading the stock to renew the sold-out flag: {e}"
            );
        }
    }
}

/// The reconciliation check: sales the store lost are restored; with `p` showing the
/// queue quiet and `dead` (the purchases in the orders topic's dead letters, listed after
/// `p` was read) complete, differing sales are reset as the module docs say.
async fn reconcile(
    state: &AppState,
    p: Option<Progress>,
    dead: Option<Vec<order_worker::PurchaseMessage>>,
) {
    let quiet = p.is_some_and(|p| p.lag == 0) && state.commits.running() == 0;
    // At rest: quiet, and the dead letters' undecided purchases known.
    let kept = match dead {
        Some(d) if quiet => undecided(state, d).await,
        _ => None,
    };
    if kept.is_none() {
        state.reconciler.suspects().clear();
    }
    for sale in state.catalogue.list() {
        let r = match state.inventory.store().stock(sale.id).await {
            // The store lost the sale: back from the database at once.
            Ok(None) => reconcile_sale(state, sale.id).await.map(|s| {
                tracing::warn!(
                    "sale {}: the stock store had no figures; reset from the database ({} left)",
                    sale.id,
                    s.left
                );
            }),
            Ok(Some(_)) => match &kept {
                Some(k) => {
                    let held = k.get(&sale.id).map_or(&[][..], Vec::as_slice);
                    check_sale(state, sale.id, sale.units, held).await
                }
                None => Ok(()),
            },
            Err(e) => Err(SyncError::from(e)),
        };
        if let Err(e) = r {
            tracing::warn!("reconciling sale {}: {e}", sale.id);
        }
    }
}

/// Of `dead` (the purchases in the orders topic's dead letters), those no worker decided
/// (no outcome in the database), per sale in the catalogue, as holders (user, ticket): each
/// keeps the unit its gateway reserved, since an operator's replay may still make it an
/// order. A decided one holds nothing beyond its order (a sold one's order is among the
/// active ones; a rejected one's unit was released). `None` if an outcome lookup fails.
/// Read with the queue quiet: no delivery in flight can add a letter meanwhile.
async fn undecided(
    state: &AppState,
    dead: Vec<order_worker::PurchaseMessage>,
) -> Option<HashMap<u64, Vec<inventory::Holder>>> {
    let mut kept: HashMap<u64, Vec<inventory::Holder>> = HashMap::new();
    let mut seen = HashSet::with_capacity(dead.len());
    for p in dead {
        // A ticket listed twice (dead-lettered by two groups) is one purchase.
        if state.catalogue.get(p.sale).is_none() || !seen.insert(p.ticket.clone()) {
            continue;
        }
        match state.db.outcome(&p.ticket).await {
            Ok(Some(_)) => {}
            Ok(None) => kept.entry(p.sale).or_default().push(inventory::Holder {
                user: p.user,
                tag: p.ticket,
            }),
            Err(e) => {
                tracing::warn!("the outcome of dead-lettered ticket {}: {e}", p.ticket);
                return None;
            }
        }
    }
    Some(kept)
}

/// Compares sale `id`'s store figures with the database's, `kept` (its undecided
/// dead-lettered purchases, see [`undecided`]) counted as holders beyond the active orders;
/// resets the sale when the same difference is seen two checks apart.
async fn check_sale(
    state: &AppState,
    id: u64,
    units: u64,
    kept: &[inventory::Holder],
) -> Result<(), SyncError> {
    let store = state.inventory.store();
    let Some(seen) = store.stock(id).await? else {
        return Ok(());
    };
    let Some(db_sale) = state.db.sale(id).await? else {
        return Ok(());
    };
    let active = state.db.order_counts(id).await?.active();
    // Each undecided dead-lettered purchase holds the unit its gateway reserved.
    let held = kept.len() as u64;
    if seen.units == units
        && seen.left.saturating_add(held) == db_sale.units_left
        && seen.holders == active.saturating_add(held)
    {
        state.reconciler.suspects().remove(&id);
        return Ok(());
    }
    let before = state.reconciler.suspects().insert(id, seen);
    if before != Some(seen) {
        // First sight of this difference (or it moved): look again next check.
        return Ok(());
    }
    // The same difference two checks apart, nothing moved: reset to the database, unless the
    // store moved while the holders were read.
    let mut holders = state.db.active_holder_tags(id).await?;
    // A kept purchase a replay made an order meanwhile is among the active ones already.
    let ordered: HashSet<&str> = holders.iter().map(|h| h.tag.as_str()).collect();
    let kept: Vec<inventory::Holder> = kept
        .iter()
        .filter(|h| !ordered.contains(h.tag.as_str()))
        .cloned()
        .collect();
    holders.extend(kept);
    if store.stock(id).await? == Some(seen) {
        let now = state
            .inventory
            .reconcile_bucketed(id, units, db_sale.stock_buckets, &holders)
            .await?;
        state.reconciler.resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "sale {id}: the stock store said {} left and {} holders, the database {} left and {} active orders ({} undecided purchases in the dead letters keep their units); reset ({} left now)",
            seen.left,
            seen.holders,
            db_sale.units_left,
            active,
            held,
            now.left
        );
    }
    state.reconciler.suspects().remove(&id);
    Ok(())
}
