-- The orders database (SQLite). The same tables as ../postgres; see order-worker/src/db.rs.
-- Constraints carry the invariants: one outcome per ticket (request id), one active order
-- per (sale, user), units left never negative nor above the units on sale.

CREATE TABLE sales (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_cents    INTEGER NOT NULL CHECK (price_cents >= 0),
    units          INTEGER NOT NULL CHECK (units >= 0),
    units_left     INTEGER NOT NULL CHECK (units_left >= 0 AND units_left <= units),
    starts_at_ms   INTEGER NOT NULL,
    pay_window_ms  INTEGER NOT NULL CHECK (pay_window_ms > 0),
    created_ms     INTEGER NOT NULL
);

CREATE TABLE orders (
    id            TEXT    PRIMARY KEY,
    request_id    TEXT    NOT NULL UNIQUE,
    sale_id       INTEGER NOT NULL REFERENCES sales (id),
    user_id       TEXT    NOT NULL,
    price_cents   INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'paid', 'cancelled')),
    created_ms    INTEGER NOT NULL,
    pay_by_ms     INTEGER NOT NULL,
    paid_ms       INTEGER,
    cancelled_ms  INTEGER,
    CHECK ((status = 'paid') = (paid_ms IS NOT NULL)),
    CHECK ((status = 'cancelled') = (cancelled_ms IS NOT NULL))
);

-- At most one active (pending or paid) order per user and sale.
CREATE UNIQUE INDEX orders_one_active ON orders (sale_id, user_id) WHERE status <> 'cancelled';
-- The sweep's scan for overdue pending orders.
CREATE INDEX orders_pending_due ON orders (pay_by_ms) WHERE status = 'pending';
CREATE INDEX orders_by_sale_status ON orders (sale_id, status);

-- How each purchase (ticket) ended: ordered, or rejected with a reason.
CREATE TABLE outcomes (
    ticket      TEXT    PRIMARY KEY,
    sale_id     INTEGER NOT NULL,
    user_id     TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('ordered', 'rejected')),
    order_id    TEXT    REFERENCES orders (id),
    reason      TEXT,
    decided_ms  INTEGER NOT NULL,
    CHECK ((outcome = 'ordered') = (order_id IS NOT NULL)),
    CHECK ((outcome = 'rejected') = (reason IS NOT NULL))
);
