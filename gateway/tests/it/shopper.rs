//! The shopper's side of issue 18 through the API and the pages: my orders (JSON and page),
//! sign-out, names trimmed and counted in characters, an expired captcha told apart from a
//! wrong answer, the proof-of-work check (with hostile answers), the currency, and HTML
//! error pages for browsers while the APIs keep JSON.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use crate::{TestApp, test_app, test_system, test_throttle, token_of};

async fn get(
    t: &TestApp,
    uri: &str,
    cookie: Option<&str>,
    accept: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut b = Request::get(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    if let Some(a) = accept {
        b = b.header(header::ACCEPT, a);
    }
    let (s, h, bytes) = t.call_raw(b.body(Body::empty()).expect("request")).await;
    (s, h, String::from_utf8_lossy(&bytes).into_owned())
}

async fn get_json(t: &TestApp, uri: &str, cookie: Option<&str>) -> (StatusCode, Value) {
    let (s, _, body) = get(t, uri, cookie, None).await;
    (s, serde_json::from_str(&body).unwrap_or(Value::Null))
}

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[tokio::test]
async fn my_orders_lists_the_shoppers_orders_and_only_theirs() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 5, 0).await;
    t.create_sale(2, 5, 0).await;
    let ann = t.login("ann").await;
    let bob = t.login("bob").await;
    // Before any purchase: an empty list, complete.
    let (s, v) = get_json(&t, "/api/orders", Some(&ann)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["orders"], json!([]));
    assert_eq!(v["complete"], true);
    assert_eq!(v["limit"], order_worker::db::USER_ORDERS_MAX);
    for sale in [1, 2] {
        let (_, tok) = t.token_load_test(&ann, sale).await;
        let (s, p) = t.purchase(&ann, sale, &token_of(&tok)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{p}");
        t.drain().await;
    }
    let (s, v) = get_json(&t, "/api/orders", Some(&ann)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let orders = v["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 2, "{v}");
    assert_eq!(orders[0]["sale"], 2, "newest first: {v}");
    assert_eq!(orders[1]["sale"], 1);
    for o in orders {
        assert_eq!(o["status"], "pending");
        assert_eq!(o["sale_name"], "phone");
        assert_eq!(o["currency"], "EUR");
        assert_eq!(o["price_cents"], 99_900);
        assert!(
            o["pay_by_ms"].as_u64().expect("pay-by") > v["server_time_ms"].as_u64().expect("now")
        );
        assert!(
            o["id"]
                .as_str()
                .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok())
        );
    }
    // bob has none; without a session it is a 401.
    let (s, v) = get_json(&t, "/api/orders", Some(&bob)).await;
    assert_eq!((s, v["orders"].clone()), (StatusCode::OK, json!([])));
    let (s, v) = get_json(&t, "/api/orders", None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    // The page lists them, each linking its order.
    let (s, h, html) = get(&t, "/orders", Some(&ann), Some(BROWSER_ACCEPT)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    assert_eq!(html.matches(r#"class="order-row""#).count(), 2, "{html}");
    assert!(html.contains(&format!(
        r#"href="/orders/{}""#,
        orders[0]["id"].as_str().expect("id")
    )));
    assert!(html.contains("999.00 EUR"));
    let (s, _, html) = get(&t, "/orders", Some(&bob), Some(BROWSER_ACCEPT)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains(r#"id="no-orders""#));
    let (s, _, html) = get(&t, "/orders", None, Some(BROWSER_ACCEPT)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(html.contains("Sign in first"));
}

#[tokio::test]
async fn logout_clears_both_cookies_and_refuses_other_sites() {
    let t = test_app(1.5, test_throttle()).await;
    let ann = t.login("ann").await;
    let req = Request::post("/api/logout")
        .header(header::COOKIE, &ann)
        .body(Body::empty())
        .expect("request");
    let (s, h, v) = t.call(req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sets: Vec<String> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert_eq!(sets.len(), 2, "{sets:?}");
    for name in ["seckill_session", "seckill_route"] {
        let c = sets
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .expect(name);
        let parsed = cookie::Cookie::parse(c.as_str()).expect("a Set-Cookie");
        assert_eq!(parsed.value(), "", "{c}");
        assert_eq!(parsed.max_age(), Some(cookie::time::Duration::ZERO), "{c}");
        assert_eq!(parsed.path(), Some("/"));
    }
    // Signing out without a session is fine too; from another site's page it is refused.
    let (s, _) = t.post("/api/logout", None, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let req = Request::post("/api/logout")
        .header(header::COOKIE, &ann)
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .expect("request");
    let (s, _, v) = t.call(req).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("cross_site"))
    );
}

#[tokio::test]
async fn names_are_trimmed_and_limited_in_characters_with_plain_refusals() {
    let t = test_app(1.5, test_throttle()).await;
    let (s, v) = t
        .post("/api/login", None, json!({"user": "  Zoë\u{a0} "}))
        .await;
    assert_eq!(
        (s, v["user"].as_str()),
        (StatusCode::OK, Some("Zoë")),
        "{v}"
    );
    let forty = "é".repeat(gateway::session::USER_NAME_CHARS_MAX);
    let cookie = t.login(&forty).await;
    assert_eq!(
        t.user_of(&cookie),
        forty,
        "40 accented letters (80 bytes) are a name"
    );
    let (s, v) = get_json(&t, "/api/orders", Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK, "such a user works everywhere: {v}");
    let forty_one = "é".repeat(gateway::session::USER_NAME_CHARS_MAX + 1);
    let huge = "x".repeat(10_000);
    for bad in [
        forty_one.as_str(),
        "a|b",
        "   ",
        "",
        "tab\there",
        huge.as_str(),
    ] {
        let (s, v) = t.post("/api/login", None, json!({"user": bad})).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_name")),
            "{bad:?}: {v}"
        );
        let m = v["message"].as_str().expect("message");
        assert!(
            !m.contains("bytes") && !m.contains("..="),
            "plain text: {m}"
        );
    }
}

#[tokio::test]
async fn the_check_without_an_image_is_proof_of_work_under_the_captchas_rules() {
    let t = test_system(
        Box::new(inventory::MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |c| {
            c.gateway.reveal_captcha_answers = true;
        },
    )
    .await;
    t.create_sale(1, 5, 0).await;
    let ann = t.login("ann").await;
    let bob = t.login("bob").await;
    let work = |cookie: String| {
        let t = &t;
        async move {
            let (s, v) = get_json(t, "/api/sales/1/captcha?kind=work", Some(&cookie)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["kind"], "work");
            assert!(v.get("image").is_none());
            v
        }
    };
    let v = work(ann.clone()).await;
    let bits = u32::try_from(v["bits"].as_u64().expect("bits")).expect("small");
    assert_eq!(bits, gateway::captcha::POW_BITS_TEST);
    let challenge = v["challenge"].as_str().expect("challenge").to_string();
    let id = v["captcha_id"].as_str().expect("id").to_string();
    let answer = gateway::captcha::solve_work(&challenge, bits);
    // bob cannot use ann's solved challenge.
    let (s, r) = t.token_with_captcha(&bob, 1, &id, &answer).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_captcha")),
        "{r}"
    );
    // It was used up by that attempt (single use), so ann needs a new one.
    let (s, r) = t.token_with_captcha(&ann, 1, &id, &answer).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_captcha")),
        "{r}"
    );
    // Hostile answers (each from its own shopper: the captcha route's per-user quota is
    // not what is tested here).
    for (i, bad) in [
        "",
        "x",
        "-1",
        "1.5",
        "99999999999999999999999999",
        "0x10",
        "١٢٣",
    ]
    .into_iter()
    .enumerate()
    {
        let who = t.login(&format!("hostile{i}")).await;
        let (s, v) = get_json(&t, "/api/sales/1/captcha?kind=work", Some(&who)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let id = v["captcha_id"].as_str().expect("id");
        let (s, r) = t.token_with_captcha(&who, 1, id, bad).await;
        assert_eq!(
            (s, r["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("bad_captcha")),
            "{bad:?}: {r}"
        );
    }
    // A right answer gets a token, once.
    let dan = t.login("dan").await;
    let v = work(dan.clone()).await;
    let id = v["captcha_id"].as_str().expect("id");
    let answer = gateway::captcha::solve_work(v["challenge"].as_str().expect("challenge"), bits);
    let (s, r) = t.token_with_captcha(&dan, 1, id, &answer).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r["token"].as_str().is_some());
    let (s, _) = t.token_with_captcha(&dan, 1, id, &answer).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "single use");
    // An unknown kind is a 400.
    let eve = t.login("eve").await;
    let (s, r) = get_json(&t, "/api/sales/1/captcha?kind=audio", Some(&eve)).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    // The image is still the default.
    let (s, r) = get_json(&t, "/api/sales/1/captcha", Some(&eve)).await;
    assert_eq!((s, r["kind"].as_str()), (StatusCode::OK, Some("image")));
    // A production store asks the full work.
    let p = test_app(1.5, test_throttle()).await;
    p.create_sale(1, 5, 0).await;
    let c = p.login("cat").await;
    let (_, v) = get_json(&p, "/api/sales/1/captcha?kind=work", Some(&c)).await;
    assert_eq!(v["bits"], gateway::captcha::POW_BITS);
}

/// With `--captcha-work off` the proof-of-work check is refused and the sale page offers
/// only the image; on (the default), the page offers it.
#[tokio::test]
async fn the_check_without_an_image_can_be_turned_off() {
    let t = test_system(
        Box::new(inventory::MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |c| {
            c.gateway.captcha_work = false;
        },
    )
    .await;
    t.create_sale(1, 5, 0).await;
    let ann = t.login("ann").await;
    let (s, v) = get_json(&t, "/api/sales/1/captcha?kind=work", Some(&ann)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request")),
        "{v}"
    );
    let (s, v) = get_json(&t, "/api/sales/1/captcha", Some(&ann)).await;
    assert_eq!(
        (s, v["kind"].as_str()),
        (StatusCode::OK, Some("image")),
        "{v}"
    );
    let (_, _, html) = get(&t, "/sales/1", Some(&ann), Some(BROWSER_ACCEPT)).await;
    assert!(!html.contains(r#"id="use-work""#), "{html}");

    let on = test_app(1.5, test_throttle()).await;
    on.create_sale(1, 5, 0).await;
    let bob = on.login("bob").await;
    let (_, _, html) = get(&on, "/sales/1", Some(&bob), Some(BROWSER_ACCEPT)).await;
    assert!(html.contains(r#"id="use-work""#), "{html}");
}

#[tokio::test]
async fn sales_carry_the_currency() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 5, 0).await;
    let (s, v) = get_json(&t, "/api/sales/1", None).await;
    assert_eq!(
        (s, v["currency"].as_str()),
        (StatusCode::OK, Some("EUR")),
        "{v}"
    );
    let (_, v) = get_json(&t, "/api/sales", None).await;
    assert_eq!(v["sales"][0]["currency"], "EUR");
    let (_, _, html) = get(&t, "/sales/1", None, Some(BROWSER_ACCEPT)).await;
    assert!(html.contains(r#"999.00 <span class="currency">EUR</span>"#));
    assert_eq!(
        gateway::config::validate_currency("USD").as_deref(),
        Ok("USD")
    );
    for bad in ["usd", "EURO", "", "€", "E1R"] {
        assert!(gateway::config::validate_currency(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn browsers_get_html_error_pages_and_apis_keep_json() {
    let t = test_app(1.5, test_throttle()).await;
    for path in ["/nope", "/sales/1/extra", "/orders/x/y"] {
        let (s, h, body) = get(&t, path, None, Some(BROWSER_ACCEPT)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        let ct = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        assert!(
            body.contains("No such page") && body.contains(r#"href="/""#),
            "{body}"
        );
    }
    // The APIs answer JSON whatever the Accept; so does any path asked for JSON.
    for (path, accept) in [
        ("/api/nope", Some(BROWSER_ACCEPT)),
        ("/admin/api/nope", Some(BROWSER_ACCEPT)),
        ("/nope", None),
        ("/nope", Some("application/json")),
    ] {
        let (s, h, body) = get(&t, path, None, accept).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        let ct = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(ct, "application/json", "{path} {accept:?}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["error"], "not_found");
    }
    // A page route with the wrong method: an HTML 405 for a browser, JSON otherwise.
    let req = Request::delete("/")
        .header(header::ACCEPT, BROWSER_ACCEPT)
        .body(Body::empty())
        .expect("request");
    let (s, h, _) = t.call_raw(req).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .starts_with("text/html")
    );
    let req = Request::delete("/api/sales")
        .body(Body::empty())
        .expect("request");
    let (s, _, v) = t.call(req).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

/// The error codes the gateway's shopper-facing code sends (`StatusCode::X, "code"` and
/// `unavailable("code"`), read from its source.
fn shopper_error_codes() -> std::collections::BTreeSet<String> {
    // The files on a shopper's requests (the admin's own handlers are left out).
    const FILES: [&str; 8] = [
        "shop.rs",
        "purchase.rs",
        "error.rs",
        "extract.rs",
        "front.rs",
        "proxy.rs",
        "state.rs",
        "throttle.rs",
    ];
    // Codes only an operator gets, from those files.
    const ADMIN_ONLY: [&str; 1] = ["sale_exists"];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut codes = std::collections::BTreeSet::new();
    for file in FILES {
        let text = std::fs::read_to_string(dir.join(file)).expect("source");
        let squashed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut take = |rest: &str| {
            let code: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if rest[code.len()..].starts_with('"') && !code.is_empty() {
                codes.insert(code);
            }
        };
        for (i, _) in squashed.match_indices("StatusCode::") {
            let rest = &squashed[i + "StatusCode::".len()..];
            let name_len = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .count();
            if let Some(after) = rest[name_len..].strip_prefix(",\"") {
                take(after);
            }
        }
        for (i, _) in squashed.match_indices("unavailable(\"") {
            take(&squashed[i + "unavailable(\"".len()..]);
        }
    }
    for c in ADMIN_ONLY {
        codes.remove(c);
    }
    codes
}

/// Every error code a shopper can get has a plain sentence of its own in the storefront's
/// script (`TEXTS` in web/static/app.js): a new code without one fails here.
#[test]
fn every_shopper_error_code_has_a_plain_sentence() {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/static/app.js"),
    )
    .expect("app.js");
    let start = script.find("const TEXTS = {").expect("TEXTS");
    let end = start + script[start..].find("};").expect("end of TEXTS");
    let texts = &script[start..end];
    let codes = shopper_error_codes();
    // The scan finds what it should (a broken scan would pass vacuously).
    for known in [
        "sold_out",
        "throttled",
        "bad_captcha",
        "captcha_expired",
        "bad_name",
        "tokens_exhausted",
        "overloaded",
    ] {
        assert!(codes.contains(known), "{known} not found in {codes:?}");
    }
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !texts.contains(&format!("\n    {c}: \"")))
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a sentence in app.js: {missing:?}"
    );
}
