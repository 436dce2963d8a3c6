//! Render tests of the shopper's pages added for issue 18: my orders, the sale page's own
//! order, token countdown and check without an image, currency, the header's sign-out, and
//! the start time that never reads "Starts" in the past.

use web::Template;
use web::assets::assets;
use web::views::*;

const NOW: u64 = 1_795_809_600_000;

fn sale(state: SaleState, starts_at_ms: u64) -> SaleView {
    SaleView {
        id: 7,
        name: "Café <b>crème</b>".into(),
        price_cents: 1_999,
        units: 10,
        units_left: Some(4),
        starts_at_ms,
        ends_at_ms: None,
        pay_window_ms: 600_000,
        state,
    }
}

fn order(id: u64, status: &str) -> OrderView {
    OrderView {
        id: format!("0190a1b2-0000-7000-8000-00000000000{id}"),
        ticket: "t".into(),
        sale: id,
        sale_name: "Phone <script>x</script>".into(),
        price_cents: 999,
        status: status.into(),
        created_ms: NOW - 1000,
        pay_by_ms: NOW + 600_000,
        paid_ms: None,
        cancelled_ms: None,
    }
}

fn sale_page(user: Option<&str>, sale: SaleView) -> String {
    SalePage {
        assets: assets(),
        server_time_ms: NOW,
        user: user.map(str::to_owned),
        sale,
        currency: "EUR".into(),
        captcha_work: true,
    }
    .render()
    .expect("renders")
}

#[test]
fn a_started_sale_says_started_and_shows_no_second_live_label() {
    let live = sale_page(Some("ann"), sale(SaleState::Live, NOW - 60_000));
    assert!(
        live.contains(r#"<span id="start-verb">Started</span>"#),
        "{live}"
    );
    assert!(!live.contains("Starts <time"), "never Starts in the past");
    assert!(
        live.contains(r#"<p id="countdown-box" class="countdown-box" hidden>"#),
        "no countdown box beside the LIVE label"
    );
    let upcoming = sale_page(None, sale(SaleState::Upcoming, NOW + 60_000));
    assert!(upcoming.contains(r#"<span id="start-verb">Starts</span>"#));
    assert!(upcoming.contains(r#"<p id="countdown-box" class="countdown-box" >"#));
    for state in [SaleState::SoldOut, SaleState::Ended] {
        let s = sale(state, NOW - 1);
        assert_eq!(s.start_verb(), "Started");
    }
}

#[test]
fn the_sale_page_has_the_new_elements_and_the_currency() {
    let html = sale_page(Some("ann"), sale(SaleState::Live, NOW - 1));
    for id in [
        "mine",
        "mine-text",
        "token-box",
        "token-countdown",
        "use-work",
        "work-status",
        "sign-out",
        "my-orders-link",
    ] {
        assert!(html.contains(&format!(r#"id="{id}""#)), "missing #{id}");
    }
    assert!(html.contains(r#"19.99 <span class="currency">EUR</span>"#));
    assert!(html.contains(r#"data-currency="EUR""#));
    assert!(
        html.contains(r#"maxlength="40""#),
        "the name limit in characters"
    );
    assert!(html.contains("Café &#60;b&#62;crème&#60;/b&#62;") || html.contains("Café &lt;b&gt;"));
    assert!(!html.contains("<b>crème</b>"), "escaped");
}

#[test]
fn sign_out_shows_only_when_signed_in() {
    let out = sale_page(None, sale(SaleState::Live, NOW - 1));
    assert!(
        out.contains(
            r#"<button id="sign-out" type="button" class="secondary small-button" hidden>"#
        )
    );
    let signed_in = sale_page(Some("ann"), sale(SaleState::Live, NOW - 1));
    assert!(
        signed_in
            .contains(r#"<button id="sign-out" type="button" class="secondary small-button" >"#)
    );
    assert!(signed_in.contains(r#"href="/orders""#));
}

#[test]
fn my_orders_lists_each_order_with_a_link_escaped() {
    let html = MyOrdersPage {
        assets: assets(),
        server_time_ms: NOW,
        user: Some("ann".into()),
        orders: vec![order(2, "pending"), order(1, "paid"), order(3, "cancelled")],
        complete: true,
        limit: 100,
        currency: "USD".into(),
    }
    .render()
    .expect("renders");
    assert!(html.contains(r#"data-page="my-orders""#));
    assert!(html.contains(r#"<table id="orders">"#));
    assert_eq!(html.matches(r#"class="order-row""#).count(), 3);
    assert!(html.contains(r#"href="/orders/0190a1b2-0000-7000-8000-000000000002">Pay now</a>"#));
    assert!(html.contains(r#"href="/orders/0190a1b2-0000-7000-8000-000000000001">Details</a>"#));
    assert!(html.contains("9.99 USD"));
    assert!(html.contains("cancelled (not paid in time)"));
    assert!(!html.contains("<script>x</script>"), "sale names escaped");
    assert!(!html.contains(r#"id="orders-incomplete""#));
    assert!(!html.contains(r#"id="no-orders""#));
}

#[test]
fn my_orders_empty_and_incomplete() {
    let html = MyOrdersPage {
        assets: assets(),
        server_time_ms: NOW,
        user: Some("ann".into()),
        orders: vec![],
        complete: false,
        limit: 100,
        currency: "EUR".into(),
    }
    .render()
    .expect("renders");
    assert!(html.contains(r#"id="no-orders""#));
    assert!(html.contains(r#"id="orders-incomplete""#));
}

#[test]
fn a_message_page_links_home_and_to_my_orders() {
    let html = MessagePage {
        assets: assets(),
        server_time_ms: NOW,
        user: None,
        title: "No such page".into(),
        message: "There is nothing <here>.".into(),
    }
    .render()
    .expect("renders");
    assert!(
        html.contains(r#"<p id="message">There is nothing &#60;here&#62;.</p>"#)
            || html.contains("&lt;here&gt;")
    );
    assert!(html.contains(r#"href="/orders""#));
}
