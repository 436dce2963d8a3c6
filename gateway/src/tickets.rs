//! Tickets: what a buyer holds after a `202`, and how it ends. The gateway records each
//! accepted purchase; the order workers (a later issue) resolve tickets as ordered or
//! rejected through [`TicketBook::resolve`], which is the one seam they plug into.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Tickets remembered at most, beyond the purchases in flight: once full, the oldest
/// resolved ticket is forgotten for each new one; a queued ticket is never forgotten, and
/// while every ticket is still queued the gateway refuses new purchases (503) instead.
pub const TICKETS_MAX: usize = 1_000_000;

/// How a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TicketState {
    /// In the queue, not yet handled by a worker.
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

/// One accepted purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// The purchase message's offset in the queue (its place in line).
    pub offset: u64,
    /// How it stands.
    pub state: TicketState,
}

/// The tickets of this gateway.
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
    /// Resolved tickets, oldest resolution first: the ones to forget when full.
    resolved: VecDeque<String>,
}

impl TicketBook {
    /// A book holding at most `limit` tickets (at most [`TICKETS_MAX`]) beyond the
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

    /// Whether a new ticket fits (the gateway checks before reserving a unit): there is
    /// room, or a resolved ticket can be forgotten.
    pub fn has_room(&self) -> bool {
        let b = self.lock();
        b.tickets.len() < self.limit || !b.resolved.is_empty()
    }

    /// Records an accepted purchase, forgetting the oldest resolved ticket when full. A
    /// purchase that passed [`TicketBook::has_room`] is always recorded, so the book may
    /// exceed its limit by the purchases that were in flight together.
    pub fn insert(&self, id: String, ticket: Ticket) {
        let mut b = self.lock();
        while b.tickets.len() >= self.limit {
            let Some(old) = b.resolved.pop_front() else {
                break;
            };
            b.tickets.remove(&old);
        }
        b.tickets.insert(id, ticket);
    }

    /// A ticket.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        self.lock().tickets.get(id).cloned()
    }

    /// Resolves a queued ticket (the workers' seam) as ordered or rejected. Returns false if
    /// unknown, already resolved, or `state` is `Queued` (not a resolution).
    pub fn resolve(&self, id: &str, state: TicketState) -> bool {
        if state == TicketState::Queued {
            return false;
        }
        let mut b = self.lock();
        match b.tickets.get_mut(id) {
            Some(t) if t.state == TicketState::Queued => {
                t.state = state;
                b.resolved.push_back(id.to_string());
                true
            }
            _ => false,
        }
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

    fn queued(n: u64) -> Ticket {
        Ticket {
            sale: 1,
            user: format!("u{n}"),
            offset: n,
            state: TicketState::Queued,
        }
    }

    #[test]
    fn a_full_book_forgets_the_oldest_resolved_ticket_never_a_queued_one() {
        let book = TicketBook::with_limit(3);
        for n in 0..3 {
            book.insert(format!("t{n}"), queued(n));
        }
        assert!(!book.has_room(), "full of queued tickets");
        assert!(book.resolve("t1", TicketState::Rejected { reason: "x".into() }));
        assert!(book.resolve(
            "t0",
            TicketState::Ordered {
                order_id: "o".into()
            }
        ));
        assert!(!book.resolve("t0", TicketState::Queued), "resolved once");
        assert!(
            !book.resolve("t2", TicketState::Queued),
            "queued is no resolution"
        );
        assert!(
            !book.resolve("t0", TicketState::Rejected { reason: "y".into() }),
            "resolved once"
        );
        assert!(book.has_room());
        book.insert("t3".into(), queued(3));
        // t1 was resolved first: it goes; t0 (resolved later) and the queued t2 stay.
        assert!(book.get("t1").is_none());
        assert!(book.get("t0").is_some() && book.get("t2").is_some());
        book.insert("t4".into(), queued(4));
        assert!(book.get("t0").is_none());
        assert_eq!(book.len(), 3);
        assert!(!book.has_room());
        // Past the check, a purchase in flight is still recorded (never lost).
        book.insert("t5".into(), queued(5));
        assert_eq!(book.len(), 4);
        assert!(book.get("t2").is_some() && book.get("t5").is_some());
    }
}
