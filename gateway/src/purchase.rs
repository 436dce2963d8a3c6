//! `POST /api/sales/{id}/purchase`: the purchase, as named steps.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use inventory::Reservation;
use queue::Message;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ClientIp, JsonBody, SaleIdPath, session_user};
use crate::ledger::Claimant;
use crate::sales::Sale;
use crate::state::{AppState, LINE_REFRESH_MS, LINE_STATS_TIMEOUT_MS, Running, Shared};
use crate::tickets::{Done, Ticket};
use crate::token::{TokenError, Verified};

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PurchaseBody {
    token: String,
}

/// A purchase refused on public facts alone ([`refuse_on_public_facts`]).
#[derive(Debug)]
pub enum Refusal {
    /// `410 sold_out`: answered from the static [`crate::error::SOLD_OUT_BODY`].
    SoldOut,
    /// `404 not_found`, `410 ended`, `409 sale_paused` or `425 not_started` (with
    /// `Retry-After`).
    Other(ApiError),
}

/// The refusal with the `Content-Length` axum's router adds to the answer of every route
/// (the router then leaves it as it is): the front service's fast path sends this answer
/// without the router, and it must be the router's byte for byte. The sold-out answer
/// carries its length already ([`crate::error::sold_out_response`]).
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SoldOut => crate::error::sold_out_response(),
            Refusal::Other(e) => {
                let mut resp = e.into_response();
                set_content_length(&mut resp);
                resp
            }
        }
    }
}

/// What axum's router adds to the answer of every route: a `Content-Length` of the body's
/// exact size, unless the answer has one (axum's `set_content_length`). Without it, hyper
/// would add one too, but after its own headers: a different order on the wire.
fn set_content_length(resp: &mut Response) {
    if resp
        .headers()
        .contains_key(axum::http::header::CONTENT_LENGTH)
    {
        return;
    }
    if let Some(n) = axum::body::HttpBody::size_hint(resp.body()).exact() {
        resp.headers_mut().insert(
            axum::http::header::CONTENT_LENGTH,
            axum::http::HeaderValue::from(n),
        );
    }
}

/// The purchase's refusals on public facts, answered from memory at `now` before any
/// signature is checked or the body is read: that a sale is unknown, ended, paused, not
/// started or sold out is no secret, and in a flash sale it is the answer most requests
/// get. Counts what it refuses (`not_started`, `sale_paused`, `sold_out`); returns the sale
/// if none applies. The one place these checks live: the handler asks it first, and so
/// does the front service's fast path (`crate::front`), which answers these refusals
/// without the router, so the two cannot drift apart.
pub fn refuse_on_public_facts(state: &AppState, id: u64, now: u64) -> Result<Arc<Sale>, Refusal> {
    public_facts(state, id, now, true)
}

/// [`refuse_on_public_facts`] for the token route (`POST /api/sales/{id}/token`, asked by
/// `shop::new_token` first and by the front service's fast path): the same refusals but
/// `not_started` (a token may be taken before the start).
pub fn refuse_token_on_public_facts(
    state: &AppState,
    id: u64,
    now: u64,
) -> Result<Arc<Sale>, Refusal> {
    public_facts(state, id, now, false)
}

fn public_facts(
    state: &AppState,
    id: u64,
    now: u64,
    refuse_before_start: bool,
) -> Result<Arc<Sale>, Refusal> {
    let m = &state.metrics;
    let sale = state.sale_or_404(id).map_err(Refusal::Other)?;
    if sale.ends_at_ms.is_some_and(|e| now >= e) {
        return Err(Refusal::Other(ApiError::ended()));
    }
    crate::sales::refuse_paused(&sale, m).map_err(Refusal::Other)?;
    if refuse_before_start && now < sale.starts_at_ms {
        m.not_started.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::Other(
            ApiError::new(
                StatusCode::TOO_EARLY,
                "not_started",
                format!("the sale starts at {}", sale.starts_at_ms),
            )
            .retry_after_ms(sale.starts_at_ms - now),
        ));
    }
    if state.inventory.flagged_sold_out(id) {
        m.sold_out.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::SoldOut);
    }
    Ok(sale)
}

pub async fn purchase(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SaleIdPath(id): SaleIdPath,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let m = &state.metrics;
    let now = state.now_ms();
    // Public facts first, from memory (the front service asks the same before routing).
    let sale = match refuse_on_public_facts(&state, id, now) {
        Ok(sale) => sale,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    // Then who is asking, and whether they are asking too often (before the body is read
    // and the token checked, so a flood of attempts costs one signature check each).
    let user = session_user(&state, req.headers())?;
    state
        .throttle
        .check_purchase(&user, id, ip, now)
        .map_err(|t| state.throttled(t))?;
    let JsonBody(body) =
        <JsonBody<PurchaseBody> as axum::extract::FromRequest<()>>::from_request(req, &()).await?;
    let verified = state
        .tokens
        .verify(&body.token, &user, id, now)
        .map_err(|e| {
            m.bad_token.fetch_add(1, Ordering::Relaxed);
            ApiError::from(e)
        })?;
    // From the token spend on, the purchase must end whole: with the token spent and the
    // unit queued (its ticket recorded), or with both given back; never a token spent for
    // nothing or a unit held by nobody. It runs inside this request's future (no task of
    // its own: issue 19); if the request is cut short (its timeout, the purchase wait
    // below, or the client going away), [`Handoff`] moves the rest to a task that ends it.
    let price_cents = sale.price_cents;
    let per_user_limit = sale.per_user_limit;
    // The ticket is the request id and the message id: a retried publish is de-duplicated.
    // Random beyond its time: a ticket is a bearer capability on an unauthenticated route.
    let ticket = order_worker::purchase::new_id(now);
    let running = Running::enter(&state);
    let addr = state.counted_addr(ip);
    let commit = Commit {
        state: state.clone(),
        sale: id,
        user,
        token: verified,
        addr,
        ticket,
        ticket_id: ticket.to_string(),
        price_cents,
        per_user_limit,
        now,
    };
    let mut commit = Handoff::new(async move {
        let _running = running;
        commit_purchase(commit).await
    });
    let wait = Duration::from_millis(state.config.purchase_wait_ms.max(1));
    let outcome = match tokio::time::timeout(wait, &mut commit).await {
        Ok(Ok(outcome)) => outcome?,
        Ok(Err(panicked)) => return Err(ApiError::internal(Panicked(panicked))),
        Err(_) => {
            // The enqueue is slow (a slow disk or broker); it goes on without us (the
            // handoff's drop, at this return, moves it to a task of its own).
            m.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unavailable(
                "outcome_unknown",
                "the purchase is still being queued; follow its ticket",
                1000,
            )
            .with_ticket(ticket.to_string()));
        }
    };
    let (ticket, confirm) = outcome;
    let position = position(&state, confirm.offset).await;
    let receipt = state.receipts.sign(&ticket, id, confirm.offset);
    let accepted = Accepted {
        ticket,
        position,
        receipt,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        accepted.to_json(),
    )
        .into_response())
}

/// What a buyer who holds the sale's per-person limit is told.
fn already_bought_message(limit: u32) -> String {
    if limit <= 1 {
        "one per person: you already hold one".to_string()
    } else {
        format!("{limit} per person: you already hold {limit}")
    }
}

/// Publish attempts (same message id) while the queue's answer is ambiguous.
pub const PUBLISH_ATTEMPTS: u32 = 3;

/// Whether a failed publish certainly stored nothing: the queue refused it before taking
/// it (full, invalid, over a limit, no such topic), or the client never sent it (broker
/// unreachable: `NotSent`). Anything else — a lost connection or
/// timeout to a broker, a broker-side error, a write failure, the queue closing while the
/// publish waited, an error of a kind added later — may have left the message stored.
fn definitely_not_stored(e: &queue::Error) -> bool {
    matches!(
        e,
        queue::Error::Full { .. }
            | queue::Error::Invalid(_)
            | queue::Error::Limit { .. }
            | queue::Error::NoSuchTopic(_)
            | queue::Error::NotSent(_)
            // Refused in the handshake, before any request was sent.
            | queue::Error::Auth(_)
    )
}

/// One purchase past its token check, run by [`commit_purchase`] as named steps: room for
/// its ticket, spend the token, reserve the unit, publish, record the ticket; and the roll
/// backs (give the token back, release the unit) where a step fails for certain.
struct Commit {
    state: Shared,
    sale: u64,
    user: String,
    token: Verified,
    /// The client address counted for the token (for a restore).
    addr: Option<std::net::IpAddr>,
    ticket: uuid::Uuid,
    ticket_id: String,
    price_cents: u64,
    /// Units one person may hold of this sale.
    per_user_limit: u32,
    now: u64,
}

impl Commit {
    /// Step 1: refuse rather than forget a ticket when every ticket this gateway remembers
    /// is still queued (before the token is spent, so the buyer keeps it).
    fn check_room(&self) -> ApiResult<()> {
        if self.state.tickets.has_room() {
            return Ok(());
        }
        self.state
            .metrics
            .unavailable
            .fetch_add(1, Ordering::Relaxed);
        Err(ApiError::unavailable(
            "busy",
            "too many purchases waiting for the order workers; try again shortly",
            1000,
        ))
    }

    /// Step 2: spend the token, once.
    async fn spend_token(&self) -> ApiResult<()> {
        let t = &self.token;
        if self
            .state
            .ledger
            .spend(self.sale, t.holder, t.nonce, self.now)
            .await?
        {
            return Ok(());
        }
        self.state.metrics.bad_token.fetch_add(1, Ordering::Relaxed);
        Err(TokenError::Reused.into())
    }

    /// Roll back: a purchase that fails for the system's reasons gives its token back.
    async fn restore_token(&self) {
        let t = &self.token;
        match self
            .state
            .ledger
            .restore(
                self.sale,
                Claimant::new(t.holder, self.addr),
                t.nonce,
                t.expires_at_ms,
                self.state.now_ms(),
            )
            .await
        {
            Ok(()) => {
                self.state
                    .metrics
                    .tokens_restored
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("restoring a purchase token: {e}"),
        }
    }

    /// Step 3: reserve the unit, tagged with the ticket, if the buyer holds fewer than the
    /// sale's per-person limit: a release for this purchase (here, or a worker's after a
    /// rejection) takes back this reservation and no other.
    async fn reserve(&self) -> ApiResult<()> {
        let m = &self.state.metrics;
        let id = self.sale;
        match self
            .state
            .inventory
            .reserve_up_to(id, &self.user, &self.ticket_id, self.per_user_limit)
            .await
        {
            Ok(Reservation::Reserved { .. }) => {
                m.reservations.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Reservation::SoldOut) => {
                m.sold_out.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(StatusCode::GONE, "sold_out", "sold out"))
            }
            Ok(Reservation::AlreadyBought) => {
                m.already_bought.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_bought",
                    already_bought_message(self.per_user_limit),
                ))
            }
            Ok(Reservation::NoSuchSale) => {
                self.restore_token().await;
                m.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::unavailable(
                    "unavailable",
                    format!("sale {id} has no stock defined"),
                    1000,
                ))
            }
            Err(e) => {
                // The reservation may or may not have happened. It is NOT released here:
                // the user may hold a unit from an earlier, accepted purchase, and a release
                // would hand that one back. A unit held by nobody is found by
                // reconciliation.
                self.restore_token().await;
                m.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    /// Step 4: publish durably, retrying with the same message id while the queue's answer
    /// is ambiguous. A definite refusal rolls the reservation and the token back.
    async fn publish(&self, payload: Vec<u8>) -> ApiResult<queue::Confirm> {
        let m = &self.state.metrics;
        let ticket = self.ticket;
        let mut attempt = 0;
        // Once any attempt may have stored the message, a later definite refusal does not
        // make the outcome definite: the unit stays held (never sold twice).
        let mut maybe_stored = false;
        loop {
            attempt += 1;
            let message = Message::new(payload.clone()).with_id(ticket.as_u128());
            match self.state.publisher.publish(message).await {
                Ok(c) => return Ok(c),
                Err(e) if !definitely_not_stored(&e) && attempt < PUBLISH_ATTEMPTS => {
                    maybe_stored = true;
                    tracing::warn!("publish of ticket {ticket}: {e}; retrying with the same id");
                }
                Err(e) if maybe_stored || !definitely_not_stored(&e) => {
                    // It may be queued: keep the unit (an order may come of it); if it was
                    // not, reconciliation frees it. Never sell it twice.
                    m.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("publish of ticket {ticket}: {e}; its outcome is unknown");
                    return Err(ApiError::unavailable(
                        "outcome_unknown",
                        "the purchase may or may not have been queued; check your ticket or orders before trying again",
                        1000,
                    )
                    .with_ticket(self.ticket_id.clone()));
                }
                Err(e) => {
                    // Definitely not queued: give the unit back before answering.
                    self.roll_back().await;
                    m.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("publish of ticket {ticket}: {e}; not queued");
                    return Err(ApiError::unavailable(
                        "unavailable",
                        "the purchase could not be queued; try again",
                        1000,
                    ));
                }
            }
        }
    }

    /// Roll back a purchase certainly not queued: release its unit, give its token back.
    async fn roll_back(&self) {
        if let Err(re) = self
            .state
            .inventory
            .release_if(self.sale, &self.user, Some(&self.ticket_id))
            .await
        {
            tracing::error!("release after a failed enqueue: {re}");
        }
        self.state.metrics.released.fetch_add(1, Ordering::Relaxed);
        self.restore_token().await;
    }

    /// Step 5: remember the queued ticket; its id, for the answer.
    fn record(self, confirm: &queue::Confirm) -> String {
        self.state.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        self.state.tickets.insert(
            self.ticket_id.clone(),
            Ticket {
                sale: self.sale,
                user: self.user,
                offset: confirm.offset,
            },
        );
        self.ticket_id
    }

    /// The message body ([`purchase_payload`]).
    fn payload(&self) -> Vec<u8> {
        purchase_payload(
            &self.ticket_id,
            self.sale,
            &self.user,
            self.price_cents,
            self.now,
        )
    }
}

/// A purchase's message body: [`order_worker::PurchaseMessage`] as JSON, written directly
/// (the same bytes as `serde_json::to_vec`, which a test holds it to, for a fraction of
/// the instructions, on every purchase: issue 19).
fn purchase_payload(
    ticket: &str,
    sale: u64,
    user: &str,
    price_cents: u64,
    accepted_at_ms: u64,
) -> Vec<u8> {
    let mut out = String::with_capacity(96 + ticket.len() + user.len());
    out.push_str("{\"ticket\":");
    crate::error::push_json_string(&mut out, ticket);
    let _ = write!(out, ",\"sale\":{sale},\"user\":");
    crate::error::push_json_string(&mut out, user);
    let _ = write!(
        out,
        ",\"price_cents\":{price_cents},\"accepted_at_ms\":{accepted_at_ms}}}"
    );
    out.into_bytes()
}

/// Reserve, publish, then record the ticket or release the unit; the ticket's id and the
/// queue's confirm.
async fn commit_purchase(commit: Commit) -> ApiResult<(String, queue::Confirm)> {
    commit.check_room()?;
    commit.spend_token().await?;
    let payload = commit.payload();
    commit.reserve().await?;
    let started = std::time::Instant::now();
    let confirm = commit.publish(payload).await?;
    let enqueue_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    commit
        .state
        .metrics
        .enqueue_us_sum
        .fetch_add(enqueue_us, Ordering::Relaxed);
    commit.state.metrics.enqueue.record(enqueue_us);
    let ticket = commit.record(&confirm);
    Ok((ticket, confirm))
}

/// A purchase's commit, run inside the request's own future: on the happy path it costs
/// no task (no `tokio::spawn`, no `JoinHandle`, no wake across tasks). If the request's
/// future is dropped before the commit has ended (the request timed out, the purchase wait
/// ran out, or the client went away), the drop hands the unfinished commit to a task of
/// its own, which runs it to its end from the step it stopped at: the purchase ends whole
/// whoever still waits for it. The commit is boxed so that it can move to that task after
/// having been polled in place.
///
/// A panic inside the commit is caught at its poll and returned as the output (the request
/// answers 500, as a panicking task's `JoinError` did); a commit that panicked is never
/// handed off (polling it again would only panic again).
struct Handoff<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    /// `None` once the commit has ended (or panicked).
    commit: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Handoff<F>
where
    F::Output: Send + 'static,
{
    fn new(commit: F) -> Self {
        Handoff {
            commit: Some(Box::pin(commit)),
        }
    }
}

impl<F: Future + Send + 'static> Future for Handoff<F>
where
    F::Output: Send + 'static,
{
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(commit) = self.commit.as_mut() else {
            // Only a caller's bug gets here: a future is not polled after it is ready.
            return Poll::Ready(Err(Box::new("a purchase's commit polled after its end")));
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                self.commit = None;
                Poll::Ready(Ok(out))
            }
            Err(panicked) => {
                self.commit = None;
                Poll::Ready(Err(panicked))
            }
        }
    }
}

impl<F: Future + Send + 'static> Drop for Handoff<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        let Some(commit) = self.commit.take() else {
            return;
        };
        // Dropped inside the runtime (a request future is dropped by its connection task,
        // or by the runtime itself at shutdown, both in its context).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(commit);
            }
            Err(_) => {
                tracing::error!("a purchase cut short outside any runtime cannot finish");
            }
        }
    }
}

/// A panic's payload, as the 500's log line shows it.
struct Panicked(Box<dyn std::any::Any + Send>);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = self
            .0
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| self.0.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        write!(f, "a purchase's commit panicked: {what}")
    }
}

/// The body of a `202`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    ticket: String,
    position: Option<u64>,
    /// The ticket's sale and place, signed, so any gateway can answer for it while it
    /// waits ([`crate::tickets::ReceiptKey`]).
    receipt: String,
}

impl Accepted {
    /// The JSON body, written directly: the same bytes as `serde_json::to_string(self)`
    /// (a test holds them to it) for a quarter of the instructions, on every accepted
    /// purchase (issue 19).
    fn to_json(&self) -> String {
        let mut out = String::with_capacity(48 + self.ticket.len() + self.receipt.len());
        out.push_str("{\"ticket\":");
        crate::error::push_json_string(&mut out, &self.ticket);
        out.push_str(",\"position\":");
        match self.position {
            // Into the body itself: no string of its own.
            Some(p) => {
                let _ = write!(out, "{p}");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"receipt\":");
        crate::error::push_json_string(&mut out, &self.receipt);
        out.push('}');
        out
    }
}

/// Place in line: messages of the orders topic not yet finished by the workers up to and
/// including this one, counted in its own partition (a topic with several partitions is
/// worked through in parallel, each in order). `None` if the queue cannot say.
pub async fn position(state: &AppState, offset: u64) -> Option<u64> {
    let line = &state.line;
    let now = state.now_ms();
    let read_at = line.read_at_ms.load(Ordering::Acquire);
    // One caller refreshes; the others use the figure as it stands.
    if now.saturating_sub(read_at) >= LINE_REFRESH_MS
        && line
            .read_at_ms
            .compare_exchange(read_at, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        let stats = tokio::time::timeout(
            Duration::from_millis(LINE_STATS_TIMEOUT_MS),
            state.queue.stats(&state.config.orders_topic),
        )
        .await;
        match stats {
            Ok(Ok(stats)) => {
                line.advance(&Done::of_topic(&stats, &state.config.workers_group));
            }
            Ok(Err(_)) | Err(_) => {
                line.read_at_ms.store(read_at, Ordering::Release);
                return None;
            }
        }
    }
    Some(line.position(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropped while pending, a handoff's future runs to its end in a task of its own.
    #[tokio::test]
    async fn a_dropped_handoff_finishes_its_future_in_a_task() {
        let (go, gone) = tokio::sync::oneshot::channel::<()>();
        let (ended, end) = tokio::sync::oneshot::channel::<()>();
        let mut handoff = Handoff::new(async move {
            let _ = gone.await;
            let _ = ended.send(());
        });
        // Polled once (it waits for `go`), then dropped, as a cut-short request is.
        tokio::select! {
            biased;
            _ = &mut handoff => panic!("the future ended before it was let go"),
            () = std::future::ready(()) => {}
        }
        drop(handoff);
        go.send(()).expect("the handed-off future still waits");
        end.await.expect("the handed-off future ran to its end");
    }

    /// A panic inside the commit comes out as an error (the request answers 500); the
    /// panicked future is not handed off.
    #[tokio::test]
    async fn a_panicking_commit_is_an_error_not_a_handoff() {
        let mut handoff = Handoff::new(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            1u8
        });
        let out = (&mut handoff).await;
        let panicked = out.expect_err("the panic is the output");
        assert_eq!(
            Panicked(panicked).to_string(),
            "a purchase's commit panicked: boom"
        );
        assert!(handoff.commit.is_none(), "nothing left to hand off");
    }

    #[test]
    fn the_message_body_is_what_serde_json_writes() {
        let ticket = uuid::Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b).to_string();
        for (user, sale, price_cents, now) in [
            ("alice", 1, 100, 1_700_000_000_000),
            ("quote \" and \\ and \u{e9}\n", u64::MAX, 0, u64::MAX),
            ("", 0, u64::MAX, 0),
        ] {
            // Every field named: a field added to the message breaks this test's build.
            let expected = serde_json::to_vec(&order_worker::PurchaseMessage {
                ticket: ticket.clone(),
                sale,
                user: user.to_string(),
                price_cents,
                accepted_at_ms: now,
            })
            .expect("json");
            assert_eq!(
                purchase_payload(&ticket, sale, user, price_cents, now),
                expected
            );
        }
    }

    #[test]
    fn the_accepted_body_is_what_serde_json_writes() {
        for (ticket, position, receipt) in [
            ("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Some(17), "AbC-_09"),
            ("t", None, ""),
            ("quote \" and \\", Some(u64::MAX), "\u{e9}\n"),
        ] {
            let a = Accepted {
                ticket: ticket.to_string(),
                position,
                receipt: receipt.to_string(),
            };
            assert_eq!(a.to_json(), serde_json::to_string(&a).expect("json"));
        }
    }
}
