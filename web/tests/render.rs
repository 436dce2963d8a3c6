//! Render tests: each page renders, carries the ids docs/WEB.md promises, escapes what
//! users typed, and links the hashed assets.

use web::Template;
use web::assets::assets;
use web::views::*;

const NOW: u64 = 1_795_809_600_000;

fn sale(state: SaleState) -> SaleView {
    SaleView {
        id: 7,
        name: "Phone <script>alert(1)</script>".into(),
        price_cents: 129_900,
        units: 10_000,
        units_left: Some(1_234),
        starts_at_ms: NOW + 60_000,
        ends_at_ms: None,
        pay_window_ms: 600_000,
        state,
    }
}

#[test]
fn states_follow_the_clock_and_stock() {
    assert_eq!(
        SaleState::at(NOW, NOW + 1, None, Some(5)),
        SaleState::Upcoming
    );
    assert_eq!(SaleState::at(NOW, NOW, None, Some(5)), SaleState::Live);
    assert_eq!(SaleState::at(NOW, NOW, None, None), SaleState::Live);
    assert_eq!(SaleState::at(NOW, NOW, None, Some(0)), SaleState::SoldOut);
    assert_eq!(SaleState::at(NOW, 0, Some(NOW), Some(5)), SaleState::Ended);
    assert_eq!(
        SaleState::at(NOW, 0, Some(NOW + 1), Some(0)),
        SaleState::SoldOut
    );
    assert_eq!(SaleState::SoldOut.code(), "sold_out");
    assert_eq!(SaleState::SoldOut.label(), "sold out");
}

#[test]
fn sale_list_renders_each_sale_escaped() {
    let html = SalesPage {
        assets: assets(),
        currency: "EUR".into(),
        server_time_ms: NOW,
        user: Some("ann".into()),
        sales: vec![sale(SaleState::Upcoming), {
            let mut s = sale(SaleState::SoldOut);
            s.id = 8;
            s.units_left = Some(0);
            s
        }],
    }
    .render()
    .expect("ok");
    assert!(html.contains(r#"<ul id="sales""#));
    assert!(html.contains(r#"data-sale-id="7""#) && html.contains(r#"data-sale-id="8""#));
    assert!(html.contains(r#"href="/sales/8""#));
    assert!(html.contains(r#"data-state="upcoming""#) && html.contains(r#"data-state="sold_out""#));
    assert!(html.contains("1,299.00"), "price formatted");
    assert!(html.contains("1,234"), "units left formatted");
    assert!(!html.contains("<script>alert"), "names are escaped");
    assert!(html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"));
    assert!(html.contains(&assets().css) && html.contains(&assets().app_js));
    assert!(html.contains(&format!(r#"data-server-time-ms="{NOW}""#)));
    assert!(html.contains(r#"data-user="ann""#));
}

#[test]
fn empty_sale_list_says_so() {
    let html = SalesPage {
        assets: assets(),
        currency: "EUR".into(),
        server_time_ms: NOW,
        user: None,
        sales: vec![],
    }
    .render()
    .expect("ok");
    assert!(html.contains("No sales yet"));
}

#[test]
fn sale_page_has_the_purchase_flow() {
    let html = SalePage {
        assets: assets(),
        currency: "EUR".into(),
        captcha_work: true,
        server_time_ms: NOW,
        user: None,
        sale: sale(SaleState::Upcoming),
    }
    .render()
    .expect("ok");
    for id in [
        "sale-state",
        "countdown",
        "units-left",
        "login-form",
        "login-name",
        "login-submit",
        "signed-in",
        "captcha-section",
        "captcha-image",
        "captcha-answer",
        "get-token",
        "new-captcha",
        "buy",
        "status",
    ] {
        assert!(html.contains(&format!(r#"id="{id}""#)), "missing #{id}");
    }
    assert!(html.contains(r#"data-page="sale""#));
    assert!(html.contains(&format!(r#"data-starts-at-ms="{}""#, NOW + 60_000)));
    assert!(html.contains("10m 00s"), "pay window");
    // Signed out: the sign-in section shows; signed in: it is hidden.
    assert!(!html.contains(r#"<section id="login-section" hidden"#));
    let signed_in = SalePage {
        assets: assets(),
        currency: "EUR".into(),
        captcha_work: true,
        server_time_ms: NOW,
        user: Some("bob".into()),
        sale: sale(SaleState::Live),
    }
    .render()
    .expect("ok");
    assert!(signed_in.contains(r#"<section id="login-section" hidden"#));
    assert!(signed_in.contains(r#"data-state="live""#));
}

fn order(status: &str) -> OrderView {
    OrderView {
        id: "0190a1b2-0000-7000-8000-000000000001".into(),
        ticket: "t".into(),
        sale: 7,
        sale_name: "Phone".into(),
        price_cents: 999,
        status: status.into(),
        created_ms: NOW - 1000,
        pay_by_ms: NOW + 600_000,
        paid_ms: None,
        cancelled_ms: None,
    }
}

#[test]
fn order_page_shows_pay_only_while_payable() {
    let pending = OrderPage {
        assets: assets(),
        currency: "EUR".into(),
        server_time_ms: NOW,
        user: Some("a".into()),
        order: order("pending"),
    }
    .render()
    .expect("ok");
    assert!(pending.contains(r#"id="pay""#));
    assert!(pending.contains(r#"data-status="pending""#));
    assert!(pending.contains(r#"id="pay-countdown""#));
    let late = OrderPage {
        assets: assets(),
        currency: "EUR".into(),
        server_time_ms: NOW + 600_000,
        user: None,
        order: order("pending"),
    }
    .render()
    .expect("ok");
    assert!(
        !late.contains(r#"id="pay""#),
        "no Pay button after the deadline"
    );
    for s in ["paid", "cancelled"] {
        let html = OrderPage {
            assets: assets(),
            currency: "EUR".into(),
            server_time_ms: NOW,
            user: None,
            order: order(s),
        }
        .render()
        .expect("ok");
        assert!(!html.contains(r#"id="pay""#), "{s}: no Pay button");
        assert!(html.contains(&format!(r#"data-status="{s}""#)));
    }
}

#[test]
fn admin_pages_carry_csrf_tokens_in_every_form() {
    let dash = AdminDashboard {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "CSRF-TOKEN-1".into(),
        sales: vec![AdminSaleRow {
            sale: sale(SaleState::Live),
            db_left: 5,
            store_left: Some(4),
            pending: 3,
            paid: 2,
            cancelled: 1,
            token_factor: "1.5".into(),
            per_user_limit: 1,
            admin_state: "live",
        }],
        notice: Some("sale 7 created".into()),
        error: None,
        next_id: 8,
        default_token_factor: "1.5".into(),
        form: Default::default(),
        confirm: Vec::new(),
    }
    .render()
    .expect("ok");
    // Every form that changes something (POST) carries the token; the order look-up is a
    // GET and carries none (a token never goes into a URL).
    let forms = dash.matches(r#"method="post""#).count();
    assert!(forms >= 3);
    assert!(
        dash.contains(r#"action="/admin/sales/7/pause""#)
            && dash.contains(r#"href="/admin/sales/7/end""#)
    );
    assert!(!dash.contains(r#"id="confirm-box""#), "nothing to confirm");
    assert_eq!(
        dash.matches(r#"name="csrf" value="CSRF-TOKEN-1""#).count(),
        forms
    );
    for id in [
        "live",
        "fig-requests",
        "fig-accepted",
        "fig-refused",
        "fig-enqueue-rate",
        "fig-drain-rate",
        "fig-depth",
        "fig-lag",
        "fig-orders-rate",
        "fig-cancellations",
        "fig-dead-letters",
        "workers",
        "chart",
        "sales-table",
        "create-sale",
        "notice",
    ] {
        assert!(dash.contains(&format!(r#"id="{id}""#)), "missing #{id}");
    }
    assert!(dash.contains(r#"<tr data-sale-id="7">"#));
    assert!(dash.contains("5 / 4"));
    assert!(dash.contains(&assets().admin_js));

    let letter = DeadLetterRow {
        topic: "orders".into(),
        dead_offset: 3,
        group: "order-workers".into(),
        original_offset: 41,
        attempts: 5,
        reason: "malformed <b>".into(),
        dead_at_ms: NOW,
        payload: "{}".into(),
    };
    let list = DeadLettersPage {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "C2".into(),
        letters: vec![letter.clone()],
        notice: None,
        error: None,
        topics: vec!["orders".into()],
    }
    .render()
    .expect("ok");
    assert!(list.contains(r#"name="letter" value="orders:3""#));
    assert!(list.contains(r#"value="replay:orders""#));
    assert!(list.contains(r#"<tr class="dead-letter" data-topic="orders" data-offset="3">"#));
    assert!(list.contains(r#"href="/admin/dead-letters/orders/3/discard""#));
    assert!(!list.contains("malformed <b>"), "reasons are escaped");
    assert_eq!(
        list.matches("<form").count(),
        list.matches(r#"name="csrf" value="C2""#).count()
    );
    let confirm = ConfirmPage {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "C3".into(),
        action: "discard".into(),
        letter,
    }
    .render()
    .expect("ok");
    assert!(confirm.contains(r#"action="/admin/dead-letters/orders/3/discard""#));
    assert!(confirm.contains(r#"id="confirm-submit""#));
    assert!(confirm.contains("deleted for good"));
    assert_eq!(
        confirm.matches("<form").count(),
        confirm.matches(r#"name="csrf" value="C3""#).count()
    );
}

#[test]
fn admin_login_shows_the_error() {
    let html = AdminLoginPage {
        assets: assets(),
        server_time_ms: NOW,
        error: Some("wrong secret".into()),
    }
    .render()
    .expect("ok");
    assert!(html.contains(r#"id="admin-secret""#) && html.contains("wrong secret"));
    assert!(html.contains(r#"type="password""#));
}

#[test]
fn operator_pages_keep_what_was_typed_escape_it_and_carry_csrf_tokens() {
    use web::admin_views::*;
    let typed = SaleFormValues {
        name: "Kettle <b>".into(),
        price: "1,50".into(),
        units: "5".into(),
        ..SaleFormValues::default()
    };
    let dash = AdminDashboard {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "T".into(),
        sales: Vec::new(),
        notice: None,
        error: Some("price: wrong".into()),
        next_id: 8,
        default_token_factor: "1.5".into(),
        form: typed.clone(),
        confirm: vec!["the price is 0".into()],
    }
    .render()
    .expect("ok");
    assert!(
        dash.contains(r#"value="1,50""#) && dash.contains(r#"value="Kettle &#60;b&#62;""#),
        "{dash}"
    );
    assert!(dash.contains(r#"id="form-error""#) && dash.contains(r#"id="confirm""#));
    let edit = AdminEditSalePage {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "E".into(),
        id: 9,
        form: typed,
        error: Some("refused".into()),
        confirm: Vec::new(),
    }
    .render()
    .expect("ok");
    assert!(edit.contains(r#"action="/admin/sales/9/edit""#) && edit.contains(r#"value="1,50""#));
    let confirm = AdminSaleConfirmPage {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "R".into(),
        id: 9,
        name: "Kettle".into(),
        action: "reconcile".into(),
        consequence: "reset".into(),
        unsettled: Some("3 purchases queued".into()),
    }
    .render()
    .expect("ok");
    assert!(confirm.contains(r#"action="/admin/sales/9/reconcile""#));
    assert!(confirm.contains(r#"id="force""#) && confirm.contains("3 purchases queued"));
    let orders = AdminOrdersPage {
        assets: assets(),
        server_time_ms: NOW,
        csrf: "O".into(),
        query: "ann".into(),
        orders: vec![AdminOrderRow {
            id: "o-1".into(),
            ticket: "t-1".into(),
            sale: 9,
            user: "ann".into(),
            price_cents: 150,
            status: "pending".into(),
            created_ms: NOW,
            pay_by_ms: NOW + 600_000,
        }],
        outcome: None,
        error: None,
        limit: 100,
    }
    .render()
    .expect("ok");
    assert!(orders.contains(r#"data-order-id="o-1""#) && orders.contains("1.50"));
    for (page, token) in [(&dash, "T"), (&edit, "E"), (&confirm, "R"), (&orders, "O")] {
        assert_eq!(
            page.matches(r#"method="post""#).count(),
            page.matches(&format!(r#"name="csrf" value="{token}""#))
                .count(),
            "{page}"
        );
    }
}
