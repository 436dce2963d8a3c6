//! Tickets: what a buyer holds after a `202`, and how it ends. The gateway records each
//! accepted purchase; the order workers (a later issue) resolve tickets as ordered or
//! rejected through [`TicketBook::resolve`], which is the one seam they plug into.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Most tickets remembered; the oldest resolved ones are forgotten first.
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
#[derive(Debug, Default)]
pub struct TicketBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    tickets: HashMap<String, Ticket>,
    order: VecDeque<String>,
}

impl TicketBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records an accepted purchase.
    pub fn insert(&self, id: String, ticket: Ticket) {
        let mut b = self.lock();
        if b.tickets.len() >= TICKETS_MAX {
            // Forget the oldest resolved ticket; if every ticket is still queued, the oldest.
            let pos = b
                .order
                .iter()
                .position(|t| {
                    b.tickets
                        .get(t)
                        .is_none_or(|t| t.state != TicketState::Queued)
                })
                .unwrap_or(0);
            if let Some(old) = b.order.remove(pos) {
                b.tickets.remove(&old);
            }
        }
        if b.tickets.insert(id.clone(), ticket).is_none() {
            b.order.push_back(id);
        }
    }

    /// A ticket.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        self.lock().tickets.get(id).cloned()
    }

    /// Resolves a queued ticket (the workers' seam). Returns false if unknown or already
    /// resolved.
    pub fn resolve(&self, id: &str, state: TicketState) -> bool {
        let mut b = self.lock();
        match b.tickets.get_mut(id) {
            Some(t) if t.state == TicketState::Queued => {
                t.state = state;
                true
            }
            _ => false,
        }
    }
}
