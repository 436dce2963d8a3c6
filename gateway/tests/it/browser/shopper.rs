//! The shopper's side of issue 18 in Chromium: a reload right after Buy shows the order
//! ("You have order X — pay within m:ss", with a link), my orders lists it, the check
//! without an image gets a token, an error code shows as plain text, and sign-out signs
//! out. Screenshots of the sale page and my orders are copied to `/tmp/h18/shots/` when
//! that folder exists (for people reviewing the pages).

use super::*;

/// Copies the page's screenshot to `/tmp/h18/shots/A-{name}.png` if that folder exists.
async fn keep_shot(page: &Page<'_>, name: &str) {
    page.shot(name).await;
    let dir = Path::new("/tmp/h18/shots");
    if dir.is_dir()
        && let Ok(png) = page.client.screenshot().await
    {
        let _ = std::fs::write(dir.join(format!("A-{name}.png")), png);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_buy_shows_the_order_and_my_orders_lists_it() {
    let test = "a_reload_after_buy_shows_the_order_and_my_orders_lists_it";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    // One unit: the buyer of the last unit is tested too.
    create_sale(&t, 1, 1, SystemClock.now_ms() - 1_000, 600_000).await;
    let a = browser.session(&base).await;
    a.goto("/sales/1").await;
    // Started: "Started", no second "live now" countdown, the price with its currency.
    a.wait_attr("#sale-state", "data-state", &["live"]).await;
    assert_eq!(a.text("#start-verb").await.as_deref(), Some("Started"));
    a.wait_gone("#countdown-box").await;
    let price = a.text("p.price").await.unwrap_or_default();
    assert!(
        price.contains("19.99") && price.contains("EUR"),
        "{price:?}"
    );
    sign_in(&a, "Zoë Ångström").await;
    a.wait_shown("button#sign-out").await;
    let refused = solve_captcha(&a, &t).await;
    assert_eq!(refused, None, "a token for the captcha's answer");
    // The token's 60 s, counted down beside Buy.
    let left = a.wait_shown("#token-box").await;
    assert!(
        left.starts_with("Press Buy within 0:") || left.starts_with("Press Buy within 1:00"),
        "at most the token's 60 s: {left:?}"
    );
    keep_shot(&a, "sale-page-token").await;

    // Buy, then reload at once: the page finds the purchase again (its ticket, kept in the
    // browser, or the order itself), never a new captcha.
    a.click("button#buy").await;
    a.wait_for(
        "the purchase to be accepted",
        "(() => { const s = $('#status'); return s && ['queued', 'ordered'].includes(s.dataset.state); })()",
    )
    .await;
    a.goto("/sales/1").await;
    let mine = a.wait_shown("#mine").await;
    let text = a
        .wait_for(
            "#mine to name the order and the time to pay",
            "(() => { const m = $('#mine-text'); return shown('#mine') && /You have order .* pay within \\d+:\\d\\d/.test(m.textContent) ? m.textContent : null; })()",
        )
        .await;
    assert!(text.as_str().is_some(), "{mine:?} {text}");
    assert!(
        !truthy(
            &a.eval("shown('#captcha-section')")
                .await
                .unwrap_or(Value::Null)
        ),
        "no new captcha"
    );
    let href = a
        .attr("a#mine-link", "href")
        .await
        .expect("a link to the order");
    let order = href
        .rsplit_once("/orders/")
        .map(|(_, id)| id.to_string())
        .expect("/orders/{id}");
    assert_eq!(
        order_status(&t, &order).await,
        order_worker::db::OrderStatus::Pending
    );
    keep_shot(&a, "sale-page-after-reload").await;

    // My orders, from the header.
    a.click("a#my-orders-link").await;
    a.wait_for("my orders", "location.pathname === '/orders'")
        .await;
    let row = a
        .wait_for(
            "the order's row",
            &format!(
                "(() => {{ const r = $('tr.order-row[data-order-id={o}]'); return r && shown(r) ? r.textContent : null; }})()",
                o = json!(order)
            ),
        )
        .await;
    let row = row.as_str().unwrap_or_default();
    assert!(
        row.contains("Gadget 1")
            && row.contains("19.99 EUR")
            && row.contains("waiting for payment"),
        "{row:?}"
    );
    a.wait_for(
        "the time to pay counting",
        "/^\\d+:\\d\\d$/.test(txt('tr.order-row .pay-left') || '')",
    )
    .await;
    keep_shot(&a, "my-orders").await;

    // The buyer of the last unit, in another browser (nothing kept there), finds the sale
    // sold out and their own order on its page, not just "sold out".
    let other = browser.session(&base).await;
    other.goto("/sales/1").await;
    sign_in(&other, "Zoë Ångström").await;
    other
        .wait_attr("#sale-state", "data-state", &["sold_out"])
        .await;
    let link = other
        .wait_for(
            "the own order on the sold-out page",
            "(() => { const a = $('a#mine-link'); return shown('#mine') && a ? a.getAttribute('href') : null; })()",
        )
        .await;
    assert_eq!(link.as_str(), Some(format!("/orders/{order}").as_str()));
    keep_shot(&other, "sold-out-page-with-own-order").await;
    other.close().await;

    // Sign out: the header forgets the name, and my orders asks to sign in.
    a.click("button#sign-out").await;
    a.wait_for(
        "signed out",
        "(() => { const w = $('#signed-in'); return w && w.dataset.user === '' && !shown('#sign-out') && /Sign in first/.test(document.body.innerText); })()",
    )
    .await;
    a.shot("signed-out").await;
    a.close().await;
    crew.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_read_as_plain_text_and_the_check_works_without_an_image() {
    let test = "errors_read_as_plain_text_and_the_check_works_without_an_image";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    create_sale(&t, 1, 5, SystemClock.now_ms() - 1_000, 600_000).await;
    let b = browser.session(&base).await;
    b.goto("/sales/1").await;
    // A name the server refuses (`bad_name`): plain words, no internal message.
    b.wait_shown("form#login-form").await;
    b.type_into("input#login-name", "a|b").await;
    b.click("button#login-submit").await;
    b.wait_attr("#status", "data-reason", &["bad_name"]).await;
    let said = b.text("#status").await.unwrap_or_default();
    assert!(
        said.contains("Your name must be 1 to 40 characters"),
        "{said:?}"
    );
    assert!(!said.contains("bytes") && !said.contains("..="), "{said:?}");
    b.shot("bad-name").await;
    // 40 accented letters are a name.
    let forty = "é".repeat(40);
    sign_in(&b, &forty).await;
    // The check without an image: the page computes the proof of work and gets a token.
    b.wait_shown("#captcha-section").await;
    b.click("button#use-work").await;
    b.wait_for(
        "a token from the proof of work",
        "(() => { const x = $('button#buy'); return x && shown(x) && !x.disabled; })()",
    )
    .await;
    assert!(
        b.wait_shown("#token-box")
            .await
            .contains("Press Buy within")
    );
    keep_shot(&b, "sale-page-work-token").await;
    // An unknown page is an HTML page for the browser.
    b.goto("/no/such/page").await;
    let h1 = b.wait_shown("h1").await;
    assert_eq!(h1, "No such page");
    b.close().await;
    crew.stop().await;
    drop(t);
}

/// A ticket still in line survives a reload: with no order worker running the purchase
/// waits in the queue; the reloaded page follows it again ("In line: number 1"), shows no
/// new captcha, and once a worker decides it shows the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_ticket_survives_a_reload() {
    let test = "a_waiting_ticket_survives_a_reload";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let t = super::super::test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |config| {
            config.gateway.token_factor = 100.0;
            config.gateway.reveal_captcha_answers = true;
        },
    )
    .await
    .on_port(patient())
    .await;
    let base = format!("http://{}", t.served.as_ref().expect("served").addr);
    create_sale(&t, 1, 5, SystemClock.now_ms() - 1_000, 600_000).await;
    let a = browser.session(&base).await;
    a.goto("/sales/1").await;
    sign_in(&a, "ann").await;
    let refused = solve_captcha(&a, &t).await;
    assert_eq!(refused, None, "a token for the captcha's answer");
    a.click("button#buy").await;
    let in_line = "(() => { const s = $('#status'); return s && s.dataset.state === 'queued' && /In line: number 1\\b/.test(s.textContent) ? s.textContent : null; })()";
    a.wait_for("in line, number 1", in_line).await;
    a.goto("/sales/1").await;
    a.wait_for("in line again after the reload", in_line).await;
    assert!(
        !truthy(
            &a.eval("shown('#captcha-section') || shown('#token-box')")
                .await
                .unwrap_or(Value::Null)
        ),
        "no new captcha while the ticket waits"
    );
    keep_shot(&a, "sale-page-in-line-after-reload").await;
    // A worker decides it: the page shows the order.
    t.drain().await;
    a.wait_for(
        "the order after the worker decided",
        "(() => { const m = $('#mine-text'); return shown('#mine') && /You have order/.test(m.textContent); })()",
    )
    .await;
    a.wait_attr("#status", "data-state", &["ordered"]).await;
    a.close().await;
}
