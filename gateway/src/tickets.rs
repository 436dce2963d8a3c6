//! Tickets: what a buyer holds after a `202`. How a ticket ended (ordered or rejected) is in
//! the orders database, written by the worker that decided it; this book only remembers the
//! tickets still waiting in the queue, with their offset (their place in line).
//!
//! A ticket is forgotten once the workers' group has finished its offset (acked after the
//! commit, so its outcome is in the database). While the book is full of waiting tickets the
//! gateway refuses new purchases (503 `busy`) rather than forget one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Waiting tickets remembered at most (beyond the purchases in flight).
pub const TICKETS_MAX: usize = 1_000_000;

/// How a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TicketState {
    /// In the queue, not yet decided by a worker.
    Queued,
    /// An order was created.
    Ordered {
        /// The order's id.
        order_id: String,
    },
    /// The purchase was refused after it was queued.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// One accepted purchase waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// The purchase message's offset in the queue (its place in line).
    pub offset: u64,
}

/// The waiting tickets of this gateway.
#[derive(Debug)]
pub struct TicketBook {
    inner: Mutex<Book>,
    limit: usize,
}

impl Default for TicketBook {
    fn default() -> Self {
        TicketBook::with_limit(TICKETS_MAX)
    }
}

#[derive(Debug, Default)]
struct Book {
    tickets: HashMap<String, Ticket>,
    /// Ticket ids in insertion order (close to offset order): the ones to forget first.
    order: VecDeque<(u64, String)>,
    /// Offsets below this are finished by the workers.
    done: u64,
}

impl Book {
    fn forget_done(&mut self) {
        while let Some((offset, _)) = self.order.front() {
            if *offset >= self.done {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.tickets.remove(&id);
            }
        }
    }
}

impl TicketBook {
    /// A book holding at most `limit` waiting tickets (at most [`TICKETS_MAX`]) beyond the
    /// purchases in flight.
    pub fn with_limit(limit: usize) -> Self {
        TicketBook {
            inner: Mutex::new(Book::default()),
            limit: limit.min(TICKETS_MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether a new ticket fits (the gateway checks before reserving a unit).
    pub fn has_room(&self) -> bool {
        let mut b = self.lock();
        b.forget_done();
        b.tickets.len() < self.limit
    }

    /// Records an accepted purchase. A purchase that passed [`TicketBook::has_room`] is
    /// always recorded, so the book may exceed its limit by the purchases that were in
    /// flight together.
    pub fn insert(&self, id: String, ticket: Ticket) {
        let mut b = self.lock();
        b.order.push_back((ticket.offset, id.clone()));
        b.tickets.insert(id, ticket);
    }

    /// A waiting ticket.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        self.lock().tickets.get(id).cloned()
    }

    /// The workers have finished every offset below `done`: forget those tickets (their
    /// outcomes are in the database).
    pub fn finished_below(&self, done: u64) {
        let mut b = self.lock();
        b.done = b.done.max(done);
        b.forget_done();
    }

    /// Tickets held.
    pub fn len(&self) -> usize {
        self.lock().tickets.len()
    }

    /// Whether no ticket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: u64) -> Ticket {
        Ticket {
            sale: 1,
            user: format!("u{n}"),
            offset: n,
        }
    }

    #[test]
    fn a_full_book_forgets_only_tickets_the_workers_finished() {
        let book = TicketBook::with_limit(3);
        for n in 0..3 {
            book.insert(format!("t{n}"), waiting(n));
        }
        assert!(!book.has_room(), "full of waiting tickets");
        book.finished_below(0);
        assert!(!book.has_room());
        book.finished_below(2);
        assert!(book.get("t0").is_none() && book.get("t1").is_none());
        assert!(book.get("t2").is_some(), "offset 2 is not finished");
        assert!(book.has_room());
        book.finished_below(1);
        assert_eq!(book.len(), 1, "the watermark never goes back");
        for n in 3..6 {
            book.insert(format!("t{n}"), waiting(n));
        }
        // Past the check, a purchase in flight is still recorded (never lost).
        assert_eq!(book.len(), 4);
        assert!(!book.has_room());
    }
}
