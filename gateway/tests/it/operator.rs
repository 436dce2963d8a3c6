//! The operator's controls (issue 18): pause, resume, end and edit a sale through the admin
//! API and the dashboard's forms, with the purchase and token paths refusing and a second
//! gateway on the same database following; confirmations for a zero price or a past start;
//! prices with a decimal comma refused; the order look-up; reconcile from the dashboard;
//! bulk dead-letter actions, and a replay refused for a letter nobody can read.

use super::*;

/// One admin API call with the bearer secret.
pub(super) async fn admin(
    t: &TestApp,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json");
    let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
    let (s, _, v) = t.call(b.body(body).expect("request")).await;
    (s, v)
}

async fn text(t: &TestApp, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let (s, h, b) = t.call_raw(req).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

/// Signs in through the form; the cookie and the dashboard's CSRF token.
async fn admin_session(t: &TestApp) -> (String, String) {
    let (s, h, _) = text(
        t,
        Request::post("/admin/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("secret={ADMIN}")))
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = h
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a cookie")
        .to_string();
    let page = get_page(t, "/admin", &cookie).await;
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_string();
    (cookie, csrf)
}

async fn get_page(t: &TestApp, uri: &str, cookie: &str) -> String {
    let (s, _, page) = text(
        t,
        Request::get(uri)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{uri}: {page}");
    page
}

async fn post_form(
    t: &TestApp,
    uri: &str,
    cookie: &str,
    body: String,
) -> (StatusCode, axum::http::HeaderMap, String) {
    text(
        t,
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, cookie)
            .body(Body::from(body))
            .expect("ok"),
    )
    .await
}

fn code(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_sale_is_paused_resumed_and_ended_through_the_admin_api() {
    let t = test_app(100.0, test_throttle()).await;
    t.create_sale(1, 5, 0).await;
    let ann = t.login("ann").await;
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ann_token = token_of(&v);

    let (s, v) = admin(&t, "POST", "/admin/api/sales/1/pause", None).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{v}"
    );
    assert_eq!(v["sale"]["paused"], true, "{v}");
    // Paused: no token, no purchase (a token from before the pause included), nothing
    // reserved.
    let bob = t.login("bob").await;
    let (s, v) = t.token_load_test(&bob, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");
    let (s, v) = t.purchase(&ann, 1, &ann_token).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");
    let stock = t
        .state
        .inventory
        .store()
        .stock(1)
        .await
        .expect("ok")
        .expect("stock");
    assert_eq!(stock.left, 5, "nothing reserved while paused");
    // Both refusals are counted (`gateway_purchases_total{outcome="sale_paused"}`).
    assert_eq!(
        t.state
            .metrics
            .sale_paused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let (_, v) = admin(&t, "GET", "/admin/api/sales", None).await;
    assert_eq!(v["sales"][0]["state"], "paused", "{v}");
    assert!(t.state.db.sale(1).await.expect("ok").expect("sale").paused);

    let (s, v) = admin(&t, "POST", "/admin/api/sales/1/resume", None).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("live")),
        "{v}"
    );
    let (s, v) = t.purchase(&ann, 1, &ann_token).await;
    assert_eq!(s, StatusCode::ACCEPTED, "resumed: the same token buys: {v}");

    let (s, v) = admin(&t, "POST", "/admin/api/sales/1/end", None).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("ended")),
        "{v}"
    );
    let ended = t.state.db.sale(1).await.expect("ok").expect("sale");
    assert!(
        ended.ended_ms.is_some() && ended.ends_at_ms.is_some(),
        "{ended:?}"
    );
    let (s, v) = t.token_load_test(&bob, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "ended"), "{v}");
    // An ended sale stays ended: no second end, no pause, no resume, no edit.
    for action in ["end", "pause", "resume"] {
        let (s, v) = admin(&t, "POST", &format!("/admin/api/sales/1/{action}"), None).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::CONFLICT, "sale_ended"),
            "{action}: {v}"
        );
    }
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/1",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_ended"), "{v}");
    let (s, _) = admin(&t, "POST", "/admin/api/sales/99/pause", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Without the secret: refused.
    let (s, _, _) = t
        .call(
            Request::post("/admin/api/sales/1/pause")
                .body(Body::empty())
                .expect("ok"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_upcoming_sale_is_ended_at_once() {
    let t = test_app(100.0, test_throttle()).await;
    let start = SystemClock.now_ms() + 3_600_000;
    t.create_sale(4, 5, start).await;
    let (s, v) = admin(&t, "POST", "/admin/api/sales/4/end", None).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("ended")),
        "{v}"
    );
    let sale = t.state.db.sale(4).await.expect("ok").expect("sale");
    assert!(
        sale.starts_at_ms < start && sale.ends_at_ms > Some(sale.starts_at_ms),
        "{sale:?}"
    );
    let ann = t.login("ann").await;
    let (s, v) = t.token_load_test(&ann, 4).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "ended"), "{v}");
}

/// `?newest=N` lists only the N highest ids, highest first (what the dashboard's live table
/// polls); without it every sale; out of range is a 400.
#[tokio::test]
async fn the_sales_list_takes_the_newest_n() {
    let t = test_app(100.0, test_throttle()).await;
    for id in [3, 9, 5] {
        t.create_sale(id, 5, 0).await;
    }
    let ids = |v: &Value| -> Vec<u64> {
        v["sales"]
            .as_array()
            .expect("sales")
            .iter()
            .map(|r| r["sale"]["id"].as_u64().expect("id"))
            .collect()
    };
    let (s, v) = admin(&t, "GET", "/admin/api/sales?newest=2", None).await;
    assert_eq!((s, ids(&v)), (StatusCode::OK, vec![9, 5]), "{v}");
    let (s, v) = admin(&t, "GET", "/admin/api/sales", None).await;
    assert_eq!((s, ids(&v).len()), (StatusCode::OK, 3), "{v}");
    for bad in ["0", "10001", "-1", "x"] {
        let (s, v) = admin(&t, "GET", &format!("/admin/api/sales?newest={bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

#[tokio::test]
async fn a_sale_is_edited_before_its_start_and_not_after() {
    let t = test_app(100.0, test_throttle()).await;
    let start = SystemClock.now_ms() + 3_600_000;
    t.create_sale(2, 5, start).await;
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"units": 7, "name": "Lamp", "price_cents": 250, "ends_at_ms": start + 60_000})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            &v["sale"]["name"],
            &v["sale"]["units"],
            &v["sale"]["units_left"],
            &v["sale"]["price_cents"]
        ),
        (&json!("Lamp"), &json!(7), &json!(7), &json!(250)),
        "{v}"
    );
    // The stock is re-put from the new units.
    let stock = t
        .state
        .inventory
        .store()
        .stock(2)
        .await
        .expect("ok")
        .expect("stock");
    assert_eq!((stock.units, stock.left), (7, 7));
    assert_eq!(t.state.catalogue.get(2).expect("listed").units, 7);
    // A start in the past and a zero price need "confirm".
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"starts_at_ms": 1})),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "confirmation_needed"),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("in the past")),
        "{v}"
    );
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"price_cents": 0})),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "confirmation_needed"),
        "{v}"
    );
    assert_eq!(
        t.state
            .db
            .sale(2)
            .await
            .expect("ok")
            .expect("sale")
            .price_cents,
        250
    );
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"price_cents": 0, "confirm": true})),
    )
    .await;
    assert_eq!(
        (s, &v["sale"]["price_cents"]),
        (StatusCode::OK, &json!(0)),
        "{v}"
    );
    // Out of range as at creation: 400, nothing changed.
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"ends_at_ms": start - 1})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = admin(&t, "PATCH", "/admin/api/sales/2", Some(json!({"units": 0}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        t.state.db.sale(2).await.expect("ok").expect("sale").units,
        7
    );
    // "no_end" removes the end.
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"no_end": true})),
    )
    .await;
    assert_eq!(
        (s, &v["sale"]["ends_at_ms"]),
        (StatusCode::OK, &Value::Null),
        "{v}"
    );

    // Started: refused, saying why.
    t.create_sale(3, 5, 0).await;
    let (s, v) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/3",
        Some(json!({"units": 50})),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_started"), "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("units")),
        "{v}"
    );
    assert_eq!(
        t.state.db.sale(3).await.expect("ok").expect("sale").units,
        5
    );
    let (s, _) = admin(
        &t,
        "PATCH",
        "/admin/api/sales/99",
        Some(json!({"units": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_zero_price_or_a_past_start_needs_confirm_at_creation() {
    let t = test_app(100.0, test_throttle()).await;
    let now = SystemClock.now_ms();
    let sale = |id: u64, price: u64, start: u64| json!({"id": id, "name": "Kettle", "price_cents": price, "units": 3, "starts_at_ms": start});
    let (s, v) = admin(
        &t,
        "POST",
        "/admin/api/sales",
        Some(sale(1, 0, now + 60_000)),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "confirmation_needed"),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("price is 0")),
        "{v}"
    );
    let (s, v) = admin(
        &t,
        "POST",
        "/admin/api/sales",
        Some(sale(2, 100, now - 600_000)),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "confirmation_needed"),
        "{v}"
    );
    assert!(t.state.db.sale(1).await.expect("ok").is_none());
    assert!(t.state.db.sale(2).await.expect("ok").is_none());
    let mut confirmed = sale(1, 0, now + 60_000);
    confirmed["confirm"] = json!(true);
    let (s, v) = admin(&t, "POST", "/admin/api/sales", Some(confirmed)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // "Now" (a script's clock a little behind or ahead) needs nothing.
    let (s, v) = admin(
        &t,
        "POST",
        "/admin/api/sales",
        Some(sale(3, 100, now - 5_000)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Two gateways on one orders database, each with its own in-process stock store: what an
/// operator does through the first reaches the second at its next housekeeping round.
#[tokio::test]
async fn a_second_gateway_on_the_same_database_follows_the_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = test_db(&dir).await;
    let first = test_app_on(
        Box::new(MemoryStore::new()),
        None,
        100.0,
        test_throttle(),
        Some(LOAD_TEST),
        Some(db.clone()),
    )
    .await;
    let second = test_app_on(
        Box::new(MemoryStore::new()),
        None,
        100.0,
        test_throttle(),
        Some(LOAD_TEST),
        Some(db),
    )
    .await;
    first.create_sale(1, 5, 0).await;
    first
        .create_sale(2, 4, SystemClock.now_ms() + 3_600_000)
        .await;
    gateway::sync::housekeeping(&second.state).await;
    let ann = second.login("ann").await;
    let (s, v) = second.token_load_test(&ann, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = token_of(&v);

    let (s, v) = admin(&first, "POST", "/admin/api/sales/1/pause", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    gateway::sync::housekeeping(&second.state).await;
    let (s, v) = second.purchase(&ann, 1, &token).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");
    let bob = second.login("bob").await;
    let (s, v) = second.token_load_test(&bob, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");

    let (s, _) = admin(&first, "POST", "/admin/api/sales/1/resume", None).await;
    assert_eq!(s, StatusCode::OK);
    gateway::sync::housekeeping(&second.state).await;
    let (s, v) = second.purchase(&ann, 1, &token).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");

    // An edit of the units before the start: the second gateway's own store is re-put.
    let (s, v) = admin(
        &first,
        "PATCH",
        "/admin/api/sales/2",
        Some(json!({"units": 9})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    gateway::sync::housekeeping(&second.state).await;
    let stock = second
        .state
        .inventory
        .store()
        .stock(2)
        .await
        .expect("ok")
        .expect("stock");
    assert_eq!((stock.units, stock.left), (9, 9));

    let (s, _) = admin(&first, "POST", "/admin/api/sales/1/end", None).await;
    assert_eq!(s, StatusCode::OK);
    gateway::sync::housekeeping(&second.state).await;
    let (s, v) = second.token_load_test(&bob, 1).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "ended"), "{v}");
    let (_, v) = admin(&second, "GET", "/admin/api/sales", None).await;
    assert_eq!(v["sales"][0]["state"], "ended", "{v}");
}

#[tokio::test]
async fn orders_are_found_by_id_ticket_or_user() {
    let t = test_app(100.0, test_throttle()).await;
    t.create_sale(1, 5, 0).await;
    let ann = t.login("ann").await;
    let (_, v) = t.token_load_test(&ann, 1).await;
    let (s, v) = t.purchase(&ann, 1, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let ticket = v["ticket"].as_str().expect("a ticket").to_string();
    t.drain().await;
    let (s, v) = admin(&t, "GET", "/admin/api/orders?q=ann", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let orders = v["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 1, "{v}");
    assert_eq!(
        (&orders[0]["user"], &orders[0]["ticket"]),
        (&json!("ann"), &json!(ticket))
    );
    let id = orders[0]["id"].as_str().expect("id").to_string();
    for q in [id.as_str(), ticket.as_str()] {
        let (s, v) = admin(&t, "GET", &format!("/admin/api/orders?q={q}"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["orders"][0]["id"], json!(id), "{q}: {v}");
    }
    let (_, v) = admin(&t, "GET", &format!("/admin/api/orders?q={ticket}"), None).await;
    assert_eq!(
        v["outcome"]["order_id"],
        json!(id),
        "a ticket's outcome: {v}"
    );
    let (_, v) = admin(&t, "GET", "/admin/api/orders?q=nobody", None).await;
    assert_eq!(v["orders"].as_array().map(Vec::len), Some(0), "{v}");
    let long = "x".repeat(order_worker::db::LOOKUP_QUERY_BYTES_MAX + 1);
    let (s, v) = admin(&t, "GET", &format!("/admin/api/orders?q={long}"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, _) = t
        .call(
            Request::get("/admin/api/orders?q=ann")
                .body(Body::empty())
                .expect("ok"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The page.
    let (cookie, _) = admin_session(&t).await;
    let page = get_page(&t, "/admin/orders?q=ann", &cookie).await;
    assert!(page.contains(&format!(r#"data-order-id="{id}""#)), "{page}");
    assert!(page.contains(r#"id="order-query""#) && page.contains(r#"value="ann""#));
}

#[tokio::test]
async fn unreadable_dead_letters_are_not_replayed_and_are_discarded_in_bulk() {
    let t = test_app(100.0, test_throttle()).await;
    t.create_sale(1, 5, 0).await;
    for payload in [&b"not json"[..], &b"{not a purchase"[..], &b"[]"[..]] {
        t.state
            .queue
            .publish("orders", queue::Message::new(payload))
            .await
            .expect("publish");
    }
    t.drain().await;
    let letters = t
        .state
        .queue
        .dead_letters("orders", 0, 10)
        .await
        .expect("ok");
    assert_eq!(letters.len(), 3);
    let first = letters[0].dead_offset;
    // One replay: refused, saying why; the letter stays.
    let (s, v) = admin(
        &t,
        "POST",
        &format!("/admin/api/dead-letters/orders/{first}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "would_fail_again"),
        "{v}"
    );
    // Bulk replay of the whole topic: each refused, none "replayed".
    let (s, v) = admin(
        &t,
        "POST",
        "/admin/api/dead-letters/bulk",
        Some(json!({"action": "replay", "topic": "orders"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["done"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("ok")
            .len(),
        3
    );
    // Bulk discard of one, by offset.
    let (s, v) = admin(
        &t,
        "POST",
        "/admin/api/dead-letters/bulk",
        Some(json!({"action": "discard", "topic": "orders", "offsets": [first]})),
    )
    .await;
    assert_eq!(
        (s, v["done"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1)),
        "{v}"
    );
    assert_eq!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("ok")
            .len(),
        2
    );
    let (s, _) = admin(
        &t,
        "POST",
        "/admin/api/dead-letters/bulk",
        Some(json!({"action": "explode", "topic": "orders"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = admin(
        &t,
        "POST",
        "/admin/api/dead-letters/bulk",
        Some(json!({"action": "discard", "topic": "nope"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The page: the rest of the topic, confirmed on a second page.
    let (cookie, csrf) = admin_session(&t).await;
    let (s, _, confirm) = post_form(
        &t,
        "/admin/dead-letters/bulk",
        &cookie,
        format!("csrf={csrf}&all=discard%3Aorders"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{confirm}");
    assert!(confirm.contains("Discard 2 dead letters?"), "{confirm}");
    assert_eq!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("ok")
            .len(),
        2
    );
    let fields: Vec<String> = confirm
        .split(r#"name="letter" value=""#)
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .map(|l| format!("letter={}", l.replace(':', "%3A")))
        .collect();
    assert_eq!(fields.len(), 2, "{confirm}");
    let (s, _, done) = post_form(
        &t,
        "/admin/dead-letters/bulk",
        &cookie,
        format!(
            "csrf={csrf}&action=discard&confirmed=1&{}",
            fields.join("&")
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert!(done.contains("Discarded 2."), "{done}");
    assert!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("ok")
            .is_empty()
    );
}

#[tokio::test]
async fn the_dashboard_forms_refuse_a_decimal_comma_confirm_and_keep_what_was_typed() {
    let t = test_app(100.0, test_throttle()).await;
    let (cookie, csrf) = admin_session(&t).await;
    let login = text(
        &t,
        Request::get("/admin/login")
            .body(Body::empty())
            .expect("ok"),
    )
    .await
    .2;
    assert!(login.contains("GATEWAY_ADMIN_SECRET"), "{login}");
    let sale = |price: &str, extra: &str| {
        format!("csrf={csrf}&id=5&name=Teapot&price={price}&units=3&starts_in_s=0{extra}")
    };
    let (s, _, page) = post_form(&t, "/admin/sales", &cookie, sale("1%2C50", "")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("is it 1.50 or 150?"), "{page}");
    assert!(
        page.contains(r#"value="Teapot""#) && page.contains(r#"value="1,50""#),
        "kept: {page}"
    );
    assert!(
        t.state.db.sale(5).await.expect("ok").is_none(),
        "never 150.00"
    );
    // A zero price: the form comes back with a checkbox; ticked, the sale is created.
    let (s, _, page) = post_form(&t, "/admin/sales", &cookie, sale("0", "")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains(r#"id="confirm""#) && page.contains("price is 0"),
        "{page}"
    );
    assert!(page.contains(r#"value="Teapot""#));
    assert!(t.state.db.sale(5).await.expect("ok").is_none());
    let (s, h, _) = post_form(&t, "/admin/sales", &cookie, sale("0", "&confirm=1")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h.get(header::LOCATION).expect("to"), "/admin?created=5");
    assert_eq!(
        t.state
            .db
            .sale(5)
            .await
            .expect("ok")
            .expect("sale")
            .price_cents,
        0
    );

    // Pause and resume from the table's forms; end after its confirmation page.
    let dash = get_page(&t, "/admin", &cookie).await;
    assert!(dash.contains(r#"action="/admin/sales/5/pause""#), "{dash}");
    let (s, h, _) = post_form(&t, "/admin/sales/5/pause", &cookie, format!("csrf={csrf}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let to = h
        .get(header::LOCATION)
        .expect("to")
        .to_str()
        .expect("ok")
        .to_string();
    assert!(t.state.db.sale(5).await.expect("ok").expect("sale").paused);
    let dash = get_page(&t, &to, &cookie).await;
    assert!(dash.contains("Sale 5 paused"), "{dash}");
    assert!(dash.contains(r#"action="/admin/sales/5/resume""#), "{dash}");
    let (s, _, _) = post_form(&t, "/admin/sales/5/resume", &cookie, "csrf=wrong".into()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "CSRF checked");
    let (s, _, _) = post_form(&t, "/admin/sales/5/resume", &cookie, format!("csrf={csrf}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(!t.state.db.sale(5).await.expect("ok").expect("sale").paused);
    let confirm = get_page(&t, "/admin/sales/5/end", &cookie).await;
    assert!(confirm.contains("cannot be undone") && confirm.contains(r#"id="confirm-submit""#));
    // Reconcile from the page: the result is shown.
    let (s, _, done) = post_form(
        &t,
        "/admin/sales/5/reconcile",
        &cookie,
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert!(
        done.contains("Sale 5 reconciled: 3 units, 3 left, 0 held by buyers with an active order."),
        "{done}"
    );
    let (s, _, _) = post_form(&t, "/admin/sales/5/end", &cookie, format!("csrf={csrf}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, v) = admin(&t, "GET", "/admin/api/sales", None).await;
    assert_eq!(v["sales"][0]["state"], "ended", "{v}");

    // The edit page of an upcoming sale keeps what was typed after an error.
    t.create_sale(6, 2, SystemClock.now_ms() + 3_600_000).await;
    let edit = get_page(&t, "/admin/sales/6/edit", &cookie).await;
    assert!(
        edit.contains(r#"id="edit-sale""#) && edit.contains(r#"value="phone""#),
        "{edit}"
    );
    let start = t
        .state
        .db
        .sale(6)
        .await
        .expect("ok")
        .expect("sale")
        .starts_at_ms;
    let fields = |price: &str| {
        format!(
            "csrf={csrf}&name=Bigger+phone&price={price}&units=4&starts_at=x&starts_at_ms={start}"
        )
    };
    let (s, _, page_after) = post_form(&t, "/admin/sales/6/edit", &cookie, fields("2%2C5")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        page_after.contains(r#"value="Bigger phone""#) && page_after.contains(r#"value="2,5""#)
    );
    let (s, h, _) = post_form(&t, "/admin/sales/6/edit", &cookie, fields("2.50")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        h.get(header::LOCATION).expect("to"),
        "/admin?done=edit&sale=6"
    );
    let edited = t.state.db.sale(6).await.expect("ok").expect("sale");
    assert_eq!(
        (edited.name.as_str(), edited.price_cents, edited.units),
        ("Bigger phone", 250, 4)
    );
    let stock = t
        .state
        .inventory
        .store()
        .stock(6)
        .await
        .expect("ok")
        .expect("stock");
    assert_eq!(stock.left, 4);
}

/// The same with the Redis stock store shared by both gateways (a key prefix of its own):
/// the first gateway's edit re-puts the shared stock once, the second leaves it alone, and
/// a pause made through one is refused by the other. Skipped without Redis, except under
/// `CI`, where it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_a_shared_redis_store_follow_the_operator() {
    use inventory::StockStore as _;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "gateway-operator-test:{}:{}:",
        std::process::id(),
        SystemClock.now_ms()
    );
    let store = match inventory::RedisStore::connect(&url, &prefix, 16).await {
        Ok(s) => Arc::new(s),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("Redis at {url} is required under CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no Redis at {url}: {e}");
            return;
        }
    };
    let ledger = Arc::new(gateway::ledger::RedisLedger::beside(&store));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = test_db(&dir).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(
            test_app_on(
                Box::new(store.clone()),
                Some(ledger.clone()),
                100.0,
                test_throttle(),
                Some(LOAD_TEST),
                Some(db.clone()),
            )
            .await,
        );
    }
    let (first, second) = (&apps[0], &apps[1]);
    first
        .create_sale(1, 5, SystemClock.now_ms() + 3_600_000)
        .await;
    first.create_sale(2, 5, 0).await;
    gateway::sync::housekeeping(&second.state).await;
    let (s, v) = admin(
        first,
        "PATCH",
        "/admin/api/sales/1",
        Some(json!({"units": 8})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Held by someone in the shared store now: a re-put would wipe it, so none may happen.
    store.reserve(1, "probe").await.expect("reserve");
    gateway::sync::housekeeping(&second.state).await;
    let stock = store.stock(1).await.expect("ok").expect("stock");
    assert_eq!(
        (stock.units, stock.left),
        (8, 7),
        "put once, by the first gateway"
    );

    let (s, _) = admin(first, "POST", "/admin/api/sales/2/pause", None).await;
    assert_eq!(s, StatusCode::OK);
    gateway::sync::housekeeping(&second.state).await;
    let ann = second.login("ann").await;
    let (s, v) = second.token_load_test(&ann, 2).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sale_paused"), "{v}");
    for sale in [1, 2] {
        store.forget(sale).await.expect("clean up");
        ledger.forget(sale).await.expect("clean up");
    }
}
