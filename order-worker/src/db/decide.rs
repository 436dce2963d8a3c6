//! Deciding purchases: a batch in one transaction ([`OrdersDb::decide_batch`], see the
//! module docs of [`crate::db`]), the recorded outcome of a ticket, and an operator's
//! rejection of a dead-lettered purchase.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use sqlx::Row;

#[cfg(doc)]
use super::OrdersDb;
use super::dialect::Dialect;
use super::rows::{NewOrder, NewOutcome, SaleTerms};
use super::{BATCH_MAX, DbError, DbResult, PER_USER_LIMIT_MAX, Shard, to_i64, to_u64};
use crate::purchase::PurchaseMessage;

/// Rejection reasons recorded in `outcomes.reason`.
pub mod reason {
    /// No unit left in the database.
    pub const SOLD_OUT: &str = "sold_out";
    /// The user already holds as many active orders of the sale as its per-person limit
    /// allows (one, unless the sale says otherwise).
    pub const ALREADY_BOUGHT: &str = "already_bought";
    /// The database does not know the sale.
    pub const NO_SUCH_SALE: &str = "no_such_sale";
    /// The purchase went to the dead letters and an operator discarded it.
    pub const DISCARDED: &str = "discarded";
}

/// What became of a purchase, as the worker decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An order was created.
    Ordered {
        /// The order.
        order_id: String,
        /// Its pay-by time.
        pay_by_ms: u64,
        /// Decided by this call (false: found from an earlier delivery).
        fresh: bool,
    },
    /// Refused, with a reason from [`reason`].
    Rejected {
        /// Why.
        reason: String,
        /// Decided by this call.
        fresh: bool,
    },
}

impl Decision {
    /// Whether this call made the decision (not a redelivery's look-up).
    pub fn fresh(&self) -> bool {
        match self {
            Decision::Ordered { fresh, .. } | Decision::Rejected { fresh, .. } => *fresh,
        }
    }
    fn stale(&self) -> Decision {
        let mut d = self.clone();
        match &mut d {
            Decision::Ordered { fresh, .. } | Decision::Rejected { fresh, .. } => *fresh = false,
        }
        d
    }
}

/// A purchase's recorded outcome (what `GET /api/tickets/{t}` reports once decided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// `Some(order id)` if ordered.
    pub order_id: Option<String>,
    /// `Some(reason)` if rejected.
    pub reason: Option<String>,
}

impl Shard {
    /// Decides a batch of purchases in one transaction (see the module docs); one decision
    /// per purchase, in order. A ticket seen before (in an earlier transaction or earlier in
    /// this batch) gets its recorded decision with `fresh: false` and changes nothing.
    pub async fn decide_batch(
        &self,
        purchases: &[PurchaseMessage],
        now_ms: u64,
    ) -> DbResult<Vec<Decision>> {
        if purchases.len() > BATCH_MAX {
            return Err(DbError::Invalid(format!(
                "at most {BATCH_MAX} purchases a batch"
            )));
        }
        if purchases.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_i64(now_ms, "now")?;
        let batch = Batch::new(purchases);
        let decided = in_tx!(self, tx, pg => { batch.decide_in(&mut *tx, now).await? });
        batch.in_order(decided)
    }

    /// How a ticket ended, if a worker has decided it.
    pub async fn outcome(&self, ticket: &str) -> DbResult<Option<Outcome>> {
        on_db!(self, p => {
            let r = sqlx::query(
                "SELECT sale_id, user_id, order_id, reason FROM outcomes WHERE ticket = $1")
                .bind(ticket).fetch_optional(p).await?;
            match r {
                None => Ok(None),
                Some(r) => Ok(Some(Outcome {
                    sale: to_u64(r.try_get::<i64, _>(0)?),
                    user: r.try_get(1)?,
                    order_id: r.try_get(2)?,
                    reason: r.try_get(3)?,
                })),
            }
        })
    }

    /// Outcomes recorded for `sale`, ordered and rejected (audits and tests).
    pub async fn outcome_counts(&self, sale: u64) -> DbResult<(u64, u64)> {
        let sale = to_i64(sale, "sale id")?;
        on_db!(self, p => {
            let r = sqlx::query(
                "SELECT COALESCE(SUM(CASE WHEN outcome = 'ordered' THEN 1 ELSE 0 END), 0), \
                        COALESCE(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), 0) \
                 FROM outcomes WHERE sale_id = $1")
                .bind(sale).fetch_one(p).await?;
            Ok((to_u64(r.try_get::<i64, _>(0)?), to_u64(r.try_get::<i64, _>(1)?)))
        })
    }

    /// Records `ticket` as rejected with `why` unless it is decided already (an operator
    /// discarding a dead-lettered purchase); returns whether this recorded it.
    pub async fn record_rejection(
        &self,
        purchase: &PurchaseMessage,
        why: &str,
        now_ms: u64,
    ) -> DbResult<bool> {
        let (sale, now) = (to_i64(purchase.sale, "sale id")?, to_i64(now_ms, "now")?);
        let n = on_db!(self, p => sqlx::query(
            "INSERT INTO outcomes (ticket, sale_id, user_id, outcome, order_id, reason, decided_ms) \
             VALUES ($1, $2, $3, 'rejected', NULL, $4, $5) ON CONFLICT (ticket) DO NOTHING")
            .bind(&purchase.ticket).bind(sale).bind(&purchase.user).bind(why).bind(now)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}

/// The purchases of one [`OrdersDb::decide_batch`], with the first occurrence of each
/// ticket: only that one is decided, its repeats share its decision.
struct Batch<'a> {
    purchases: &'a [PurchaseMessage],
    first: HashMap<&'a str, usize>,
}

/// What the transaction of a batch has decided so far: a decision per first occurrence (by
/// index in the batch), the orders granted, the purchases refused (in decision order) and
/// the units granted per sale (`(sale, units)`, taken when the decisions are recorded).
struct Decided {
    decisions: Vec<Option<Decision>>,
    orders: Vec<NewOrder>,
    rejected: Vec<(usize, &'static str)>,
    takes: Vec<(i64, i64)>,
}

impl<'a> Batch<'a> {
    fn new(purchases: &'a [PurchaseMessage]) -> Batch<'a> {
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(purchases.len());
        for (i, p) in purchases.iter().enumerate() {
            first.entry(p.ticket.as_str()).or_insert(i);
        }
        Batch { purchases, first }
    }

    /// The whole decision inside the batch's transaction: decisions recorded before and the
    /// batch's sales locked, then the new purchases sale by sale, then the rows. Returns a
    /// decision per first occurrence.
    async fn decide_in<C: Dialect>(
        &self,
        conn: &mut C,
        now: i64,
    ) -> DbResult<Vec<Option<Decision>>> {
        let mut decided = Decided {
            decisions: vec![None; self.purchases.len()],
            orders: Vec::new(),
            rejected: Vec::new(),
            takes: Vec::new(),
        };
        let terms = self.recall(conn, &mut decided.decisions).await?;
        for (sale, idxs) in self.new_by_sale(&decided.decisions) {
            let sale_terms = terms.get(&to_i64(sale, "sale id")?);
            self.decide_sale(conn, sale, sale_terms, &idxs, now, &mut decided)
                .await?;
        }
        self.record(conn, decided, now).await
    }

    /// Step 1: the decisions recorded by earlier deliveries of the batch's tickets, and the
    /// terms of the batch's sales (ascending ids), their rows locked until the commit (the
    /// sales of redelivered purchases too: one statement, whatever it finds).
    async fn recall<C: Dialect>(
        &self,
        conn: &mut C,
        decisions: &mut [Option<Decision>],
    ) -> DbResult<HashMap<i64, SaleTerms>> {
        let tickets: Vec<&str> = self.first.keys().copied().collect();
        let sales: BTreeSet<i64> = self
            .first
            .values()
            .map(|&i| to_i64(self.purchases[i].sale, "sale id"))
            .collect::<DbResult<_>>()?;
        let sales: Vec<i64> = sales.into_iter().collect();
        let (known, terms) = conn.recall_and_lock(&tickets, &sales).await?;
        for (ticket, order_id, reason, pay_by) in known {
            let d = match (order_id, reason, pay_by) {
                (Some(order_id), _, Some(pay_by)) => Decision::Ordered {
                    order_id,
                    pay_by_ms: to_u64(pay_by),
                    fresh: false,
                },
                (None, Some(reason), _) => Decision::Rejected {
                    reason,
                    fresh: false,
                },
                _ => {
                    return Err(DbError::Invalid(format!(
                        "outcome of {ticket} is inconsistent"
                    )));
                }
            };
            if let Some(&i) = self.first.get(ticket.as_str()) {
                decisions[i] = Some(d);
            }
        }
        Ok(terms)
    }

    /// The first occurrences not decided before, by sale (ascending: the lock order).
    fn new_by_sale(&self, decisions: &[Option<Decision>]) -> BTreeMap<u64, Vec<usize>> {
        let mut by_sale: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.purchases.iter().enumerate() {
            if self.first.get(p.ticket.as_str()) == Some(&i) && decisions[i].is_none() {
                by_sale.entry(p.sale).or_default().push(i);
            }
        }
        by_sale
    }

    /// Step 2, one sale (`terms`: read with its row locked; `None`: unknown): purchases of
    /// users who hold the sale's per-person limit N of active orders (counting those
    /// granted earlier in the batch) are refused, the first `units_left` others granted,
    /// each order the buyer's lowest free slot in 0..N, the rest find it sold out. The
    /// units granted are taken when the batch is recorded, with a conditional update: the
    /// last guard against oversell.
    async fn decide_sale<C: Dialect>(
        &self,
        conn: &mut C,
        sale: u64,
        terms: Option<&SaleTerms>,
        idxs: &[usize],
        now: i64,
        decided: &mut Decided,
    ) -> DbResult<()> {
        let sale_i = to_i64(sale, "sale id")?;
        let Some(terms) = terms else {
            for &i in idxs {
                decided.rejected.push((i, reason::NO_SUCH_SALE));
            }
            return Ok(());
        };
        // The batch's users, once each, for the look-up of active orders.
        let mut seen: HashSet<&str> = HashSet::new();
        let users: Vec<&str> = idxs
            .iter()
            .map(|&i| self.purchases[i].user.as_str())
            .filter(|u| seen.insert(u))
            .collect();
        // The slots of the users' active orders. The sale's row is locked, so no other
        // transaction changes them before the commit; the unique index on (sale, user, slot)
        // among active orders stands behind this.
        let mut slots = conn.active_slots(sale_i, &users).await?;
        let limit = terms.per_user_limit.clamp(1, i64::from(PER_USER_LIMIT_MAX));
        // In queue order: a user holding `limit` orders (from before, or granted earlier in
        // this batch) is refused; the first `units_left` others get a unit in their lowest
        // free slot; the rest find it sold out (a repeat of a user who found it sold out too).
        let mut granted: i64 = 0;
        for &i in idxs {
            let p = &self.purchases[i];
            let held = slots.entry(p.user.clone()).or_default();
            // Fewer than `limit` held, so a slot in 0..limit is free (pigeonhole).
            let free = (held.len() < limit as usize)
                .then(|| (0..limit).find(|s| !held.contains(s)))
                .flatten();
            let Some(slot) = free else {
                decided.rejected.push((i, reason::ALREADY_BOUGHT));
                continue;
            };
            if granted < terms.units_left {
                granted += 1;
                held.push(slot);
                let order_id = crate::purchase::new_id(to_u64(now)).to_string();
                let pay_by = now.saturating_add(terms.pay_window_ms);
                decided.decisions[i] = Some(Decision::Ordered {
                    order_id: order_id.clone(),
                    pay_by_ms: to_u64(pay_by),
                    fresh: true,
                });
                decided.orders.push(NewOrder {
                    id: order_id,
                    ticket: p.ticket.clone(),
                    sale: sale_i,
                    user: p.user.clone(),
                    price_cents: terms.price_cents,
                    pay_by_ms: pay_by,
                    slot: i32::try_from(slot)
                        .map_err(|_| DbError::Invalid(format!("order slot {slot}")))?,
                });
            } else {
                decided.rejected.push((i, reason::SOLD_OUT));
            }
        }
        if granted > 0 {
            decided.takes.push((sale_i, granted));
        }
        Ok(())
    }

    /// Step 3: the units granted taken (a sale whose units are no longer there fails the
    /// batch, [`DbError::Raced`]), the orders, then every outcome (refusals first, then
    /// orders); returns the decisions with the refusals filled in.
    async fn record<C: Dialect>(
        &self,
        conn: &mut C,
        decided: Decided,
        now: i64,
    ) -> DbResult<Vec<Option<Decision>>> {
        let Decided {
            mut decisions,
            orders,
            rejected,
            takes,
        } = decided;
        let mut outcomes: Vec<NewOutcome<'_>> = Vec::with_capacity(rejected.len() + orders.len());
        for (i, why) in rejected {
            decisions[i] = Some(Decision::Rejected {
                reason: why.to_string(),
                fresh: true,
            });
            let p = &self.purchases[i];
            outcomes.push(NewOutcome {
                ticket: &p.ticket,
                sale: to_i64(p.sale, "sale id")?,
                user: &p.user,
                order_id: None,
                reason: Some(why),
            });
        }
        for o in &orders {
            outcomes.push(NewOutcome {
                ticket: &o.ticket,
                sale: o.sale,
                user: &o.user,
                order_id: Some(o.id.clone()),
                reason: None,
            });
        }
        if let Some(sale) = conn.record_batch(&takes, &orders, &outcomes, now).await? {
            return Err(DbError::Raced(to_u64(sale)));
        }
        Ok(decisions)
    }

    /// One decision per purchase, in batch order: repeats of a ticket inside the batch
    /// share its decision (not fresh).
    fn in_order(&self, decisions: Vec<Option<Decision>>) -> DbResult<Vec<Decision>> {
        let mut out = Vec::with_capacity(self.purchases.len());
        for (i, p) in self.purchases.iter().enumerate() {
            let at = self.first.get(p.ticket.as_str()).copied().unwrap_or(i);
            let d =
                decisions.get(at).cloned().flatten().ok_or_else(|| {
                    DbError::Invalid(format!("ticket {} left undecided", p.ticket))
                })?;
            out.push(if at == i { d } else { d.stale() });
        }
        Ok(out)
    }
}
