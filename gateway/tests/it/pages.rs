//! The HTML pages and the admin dashboard's routes through `oneshot`: rendering with live
//! data, caching headers, every admin route refusing without credentials, the cookie
//! sign-in, CSRF and cross-site refusals, the sale form, dead-letter confirmation, and the
//! live figures.

use super::*;

fn get(uri: &str) -> axum::http::request::Builder {
    Request::get(uri)
}

async fn text(t: &TestApp, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let (s, h, b) = t.call_raw(req).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

/// Signs in as the admin through the form; returns the cookie and the dashboard's CSRF
/// token.
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
    let set = h
        .get(header::SET_COOKIE)
        .expect("ok")
        .to_str()
        .expect("ok")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/admin"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("ok").to_string();
    let (s, h, page) = text(
        t,
        get("/admin")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(h.get(header::CACHE_CONTROL).expect("ok"), "no-store");
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_string();
    assert_eq!(csrf.len(), 32);
    (cookie, csrf)
}

fn form(uri: &str, cookie: &str) -> axum::http::request::Builder {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, cookie)
}

#[tokio::test]
async fn storefront_pages_render_live_data_with_cache_headers() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(3, 7, 0).await;
    t.create_sale(4, 5, SystemClock.now_ms() + 3_600_000).await;
    let (s, h, page) = text(&t, get("/").body(Body::empty()).expect("ok")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.get(header::CONTENT_TYPE).expect("ok"),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        h.get(header::CACHE_CONTROL).expect("ok"),
        gateway::pages::PAGE_CACHE
    );
    assert!(page.contains(r#"data-sale-id="3""#) && page.contains(r#"data-sale-id="4""#));
    assert!(page.contains(r#"data-state="live""#) && page.contains(r#"data-state="upcoming""#));
    assert!(page.contains("999.00"));

    // The sale page, signed out then signed in; units left come from the store.
    let (s, _, page) = text(&t, get("/sales/3").body(Body::empty()).expect("ok")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains(r#"<span id="units-left">7</span>"#), "{page}");
    assert!(page.contains(r#"data-user="""#));
    let ann = t.login("ann").await;
    let (_, _, page) = text(
        &t,
        get("/sales/3")
            .header(header::COOKIE, &ann)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert!(page.contains(r#"data-user="ann""#));

    for bad in ["/sales/99", "/sales/abc", "/sales/-1"] {
        let (s, _, page) = text(&t, get(bad).body(Body::empty()).expect("ok")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
        assert!(page.contains("No such sale"), "{bad}");
    }
}

#[tokio::test]
async fn static_assets_are_immutable_with_etags() {
    let t = test_app(1.5, test_throttle()).await;
    let a = web::assets::assets();
    for asset in a.all() {
        let (s, h, body) = t
            .call_raw(get(&asset.url()).body(Body::empty()).expect("ok"))
            .await;
        assert_eq!(s, StatusCode::OK, "{}", asset.file);
        assert_eq!(&body[..], asset.body);
        assert_eq!(
            h.get(header::CACHE_CONTROL).expect("ok"),
            web::assets::IMMUTABLE
        );
        assert_eq!(h.get(header::CONTENT_TYPE).expect("ok"), asset.content_type);
        let etag = h.get(header::ETAG).expect("ok").clone();
        let (s, h, body) = t
            .call_raw(
                get(&asset.url())
                    .header(header::IF_NONE_MATCH, etag)
                    .body(Body::empty())
                    .expect("ok"),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert!(h.get(header::ETAG).is_some());
        let (s, _, _) = t
            .call_raw(
                get(&asset.url())
                    .header(header::IF_NONE_MATCH, "\"stale\"")
                    .body(Body::empty())
                    .expect("ok"),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    for bad in [
        "/static/app.js",
        "/static/app.000000000000.js",
        "/static/..%2Fsecret",
    ] {
        let (s, _, _) = t.call_raw(get(bad).body(Body::empty()).expect("ok")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn order_page_is_the_buyers_alone() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 2, 0).await;
    let ann = t.login("ann").await;
    let (_, v) = t.token_via_captcha(&ann, 1).await;
    let (s, v) = t.purchase(&ann, 1, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let ticket = v["ticket"].as_str().expect("ok").to_string();
    t.drain().await;
    let (_, _, v) = t
        .call(
            get(&format!("/api/tickets/{ticket}"))
                .body(Body::empty())
                .expect("ok"),
        )
        .await;
    let order = v["order_id"].as_str().expect("ordered").to_string();
    let uri = format!("/orders/{order}");
    let (s, h, page) = text(
        &t,
        get(&uri)
            .header(header::COOKIE, &ann)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get(header::CACHE_CONTROL).expect("ok"), "no-store");
    assert!(
        page.contains(r#"data-status="pending""#) && page.contains(r#"id="pay""#),
        "{page}"
    );
    let (s, _, _) = text(&t, get(&uri).body(Body::empty()).expect("ok")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let bob = t.login("bob").await;
    let (s, _, page) = text(
        &t,
        get(&uri)
            .header(header::COOKIE, &bob)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!page.contains(&order));
    let (s, _, _) = text(
        &t,
        get("/orders/not-a-uuid")
            .header(header::COOKIE, &ann)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Paid: the button is gone.
    let (s, v) = t
        .post(&format!("/api/orders/{order}/pay"), Some(&ann), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, page) = text(
        &t,
        get(&uri)
            .header(header::COOKIE, &ann)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert!(page.contains(r#"data-status="paid""#) && !page.contains(r#"id="pay""#));
}

#[tokio::test]
async fn every_admin_route_refuses_without_credentials() {
    let t = test_app(1.5, test_throttle()).await;
    let shopper = t.login("admin").await;
    let forged = "admin=YWRtaW4uMDAwfDk5OTk5OTk5OTk5OTl8AAAA";
    for cookie in [None, Some(shopper.as_str()), Some(forged)] {
        let with = |b: axum::http::request::Builder| match cookie {
            Some(c) => b.header(header::COOKIE, c),
            None => b,
        };
        for uri in [
            "/admin",
            "/admin/",
            "/admin/dead-letters",
            "/admin/dead-letters/orders/0/discard",
        ] {
            let (s, _, page) = text(&t, with(get(uri)).body(Body::empty()).expect("ok")).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} {cookie:?}");
            assert!(
                page.contains(r#"id="admin-secret""#),
                "{uri}: the sign-in form"
            );
        }
        for uri in [
            "/admin/api/live",
            "/admin/api/sales",
            "/admin/api/dead-letters",
        ] {
            let (s, _, v) = t
                .call(with(get(uri)).body(Body::empty()).expect("ok"))
                .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} {cookie:?}");
            assert_eq!(v["error"], "unauthorized");
        }
        for uri in [
            "/admin/sales",
            "/admin/logout",
            "/admin/dead-letters/orders/0/discard",
        ] {
            let req = with(Request::post(uri))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(
                    "csrf=x&id=9&name=n&price=1&units=1&starts_in_s=0",
                ))
                .expect("ok");
            let (s, _, _) = text(&t, req).await;
            assert!(
                matches!(s, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
                "{uri} {cookie:?}: {s}"
            );
        }
    }
    assert!(
        t.state.db.sale(9).await.expect("ok").is_none(),
        "nothing was created"
    );
    // A wrong secret is refused with the form again.
    let (s, h, page) = text(
        &t,
        Request::post("/admin/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("secret=wrong"))
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(h.get(header::SET_COOKIE).is_none());
    assert!(page.contains("wrong admin secret"));
}

#[tokio::test]
async fn admin_forms_need_csrf_and_the_same_site() {
    let t = test_app(1.5, test_throttle()).await;
    let (cookie, csrf) = admin_session(&t).await;
    let sale = |id: u64, csrf: &str| {
        format!(
            "csrf={csrf}&id={id}&name=Lamp&price=12.50&units=3&starts_in_s=0&pay_window_s=90&per_user_limit=1&token_factor=2&ends_in_s=3600&tz_offset_min=0"
        )
    };
    // No token, a wrong one, another site's origin, or fetch metadata saying cross-site: 403.
    for (body, origin, site) in [
        (sale(5, ""), None, None),
        (sale(5, &"0".repeat(32)), None, None),
        (sale(5, &csrf), Some("http://evil.example"), None),
        (sale(5, &csrf), None, Some("cross-site")),
    ] {
        let mut b = form("/admin/sales", &cookie);
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(s) = site {
            b = b.header("sec-fetch-site", s);
        }
        let (s, _, _) = text(&t, b.body(Body::from(body)).expect("ok")).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    assert!(t.state.db.sale(5).await.expect("ok").is_none());
    // The right token from the same site creates the sale with every setting.
    let (s, h, _) = text(
        &t,
        form("/admin/sales", &cookie)
            .header(header::HOST, "127.0.0.1:1")
            .header(header::ORIGIN, "http://127.0.0.1:1")
            .body(Body::from(sale(5, &csrf)))
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h.get(header::LOCATION).expect("ok"), "/admin?created=5");
    let created = t.state.db.sale(5).await.expect("ok").expect("created");
    assert_eq!(
        (created.units, created.price_cents, created.pay_window_ms),
        (3, 1250, 90_000)
    );
    assert_eq!(created.token_factor, Some(2.0));
    assert_eq!(created.ends_at_ms, Some(created.starts_at_ms + 3_600_000));
    let (_, _, page) = text(
        &t,
        get("/admin?created=5")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert!(page.contains("Sale 5 created.") && page.contains(r#"<tr data-sale-id="5">"#));
    // Bad input re-renders the form with the error, and creates nothing.
    for (body, needle) in [
        (sale(5, &csrf), "exists"),
        (
            sale(6, &csrf).replace("price=12.50", "price=cheap"),
            "price",
        ),
        (
            sale(6, &csrf).replace("per_user_limit=1", "per_user_limit=11"),
            "per",
        ),
    ] {
        let (s, _, page) = text(
            &t,
            form("/admin/sales", &cookie)
                .body(Body::from(body))
                .expect("ok"),
        )
        .await;
        assert!(s.is_client_error(), "{s}");
        assert!(
            page.contains(r#"id="error""#) && page.contains(needle),
            "{needle}: {page}"
        );
    }
    assert!(t.state.db.sale(6).await.expect("ok").is_none());
    // The JSON API with the cookie needs the CSRF header; with the bearer secret it doesn't.
    let api = |hdr: Option<&str>| {
        let mut b = Request::post("/admin/api/sales")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, &cookie);
        if let Some(v) = hdr {
            b = b.header(gateway::extract::CSRF_HEADER, v);
        }
        b.body(Body::from(
            json!({"id": 8, "name": "x", "price_cents": 1, "units": 1, "starts_at_ms": 0, "confirm": true})
                .to_string(),
        ))
        .expect("ok")
    };
    let (s, _, v) = t.call(api(None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _, v) = t.call(api(Some(&csrf))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Signing out ends the session.
    let (s, h, _) = text(
        &t,
        form("/admin/logout", &cookie)
            .body(Body::from(format!("csrf={csrf}")))
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(
        h.get(header::SET_COOKIE)
            .expect("ok")
            .to_str()
            .expect("ok")
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn dead_letters_are_listed_and_discarded_after_confirmation() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 1, 0).await;
    // A malformed purchase goes to the dead letters.
    t.state
        .queue
        .publish("orders", queue::Message::new(&b"not json"[..]))
        .await
        .expect("ok");
    t.drain().await;
    let (cookie, csrf) = admin_session(&t).await;
    let (s, _, page) = text(
        &t,
        get("/admin/dead-letters")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        page.matches(r#"<tr class="dead-letter""#).count(),
        1,
        "{page}"
    );
    assert!(page.contains("not json"));
    let uri = "/admin/dead-letters/orders/0/discard";
    let (s, _, page) = text(
        &t,
        get(uri)
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains(r#"id="confirm-submit""#) && page.contains("deleted for good"));
    // Still there until confirmed; a confirmation without the token is refused.
    let (s, _, _) = text(
        &t,
        form(uri, &cookie).body(Body::from("csrf=")).expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("ok")
            .len(),
        1
    );
    let (s, h, _) = text(
        &t,
        form(uri, &cookie)
            .body(Body::from(format!("csrf={csrf}")))
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        h.get(header::LOCATION).expect("ok"),
        "/admin/dead-letters?done=discard"
    );
    assert!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("ok")
            .is_empty()
    );
    let (s, _, _) = text(
        &t,
        get(uri)
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "gone");
}

#[tokio::test]
async fn live_figures_follow_purchases_and_the_drain() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 3, 0).await;
    let live = || async {
        let (s, h, v) = t
            .call(
                get("/admin/api/live")
                    .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                    .body(Body::empty())
                    .expect("ok"),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(h.get(header::CACHE_CONTROL).expect("ok"), "no-store");
        v
    };
    let v = live().await;
    assert_eq!(v["current"]["accepted"], 0);
    // Samples a second apart (the rates are per second of the samples' clock).
    let t0 = SystemClock.now_ms();
    gateway::live::sample_at(&t.state, t0 + 1000).await;
    for user in ["a", "b", "c", "d"] {
        let c = t.login(user).await;
        let (_, v) = t.token_load_test(&c, 1).await;
        if let Some(tok) = v["token"].as_str() {
            let _ = t.purchase(&c, 1, tok).await;
        }
    }
    gateway::live::sample_at(&t.state, t0 + 2000).await;
    let v = live().await;
    assert_eq!(v["current"]["accepted"], 3, "{v}");
    assert!(v["current"]["refused"].as_u64().expect("ok") >= 1, "{v}");
    assert_eq!(v["current"]["lag"], 3, "three purchases wait");
    let history = v["history"].as_array().expect("ok");
    assert!(!history.is_empty());
    let last = history.last().expect("ok");
    assert_eq!(last["backlog"], 3);
    assert!(last["incoming"].as_f64().expect("ok") > 0.0, "{last}");
    // The chart's series: requests by outcome group (a second apart: per second = count),
    // adding up to the requests, and the purchases' latency over the second.
    let groups = &last["outcomes"];
    assert_eq!(groups["accepted"], 3.0, "{last}");
    let sum: f64 = ["accepted", "sold_out", "throttled", "refused", "errors"]
        .iter()
        .map(|g| groups[g].as_f64().expect("a rate per group"))
        .sum();
    assert!(
        (sum - last["requests"].as_f64().expect("ok")).abs() < 1e-9,
        "{last}"
    );
    let p50 = last["purchase_p50_ms"]
        .as_f64()
        .expect("purchases were timed");
    let p99 = last["purchase_p99_ms"]
        .as_f64()
        .expect("purchases were timed");
    assert!(0.0 < p50 && p50 <= p99, "{last}");
    t.drain().await;
    gateway::live::sample_at(&t.state, t0 + 3000).await;
    let v = live().await;
    assert_eq!(v["current"]["lag"], 0);
    assert_eq!(v["current"]["orders"], 3, "{v}");
    let last = v["history"]
        .as_array()
        .expect("ok")
        .last()
        .expect("ok")
        .clone();
    assert!(last["drained"].as_f64().expect("ok") > 0.0, "{last}");
    assert!(
        last["purchase_p99_ms"].is_null(),
        "no purchase that second: {last}"
    );
    assert_eq!(last["outcomes"]["accepted"], 0.0, "{last}");
    // `since_ms` sends only newer points.
    let t_ms = last["t_ms"].as_u64().expect("ok");
    let (_, _, v) = t
        .call(
            get(&format!("/admin/api/live?since_ms={t_ms}"))
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .expect("ok"),
        )
        .await;
    assert!(v["history"].as_array().expect("ok").is_empty());
    // A sample too soon after the last (the dashboard's first look beside the every-second
    // task) adds no point and keeps the rates: no spike from a tiny interval.
    let drained = v["current"]["drain_rate"].clone();
    gateway::live::sample_at(&t.state, t0 + 3100).await;
    let (_, _, v) = t
        .call(
            get(&format!("/admin/api/live?since_ms={t_ms}"))
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .expect("ok"),
        )
        .await;
    assert!(v["history"].as_array().expect("ok").is_empty(), "{v}");
    assert_eq!(v["current"]["drain_rate"], drained);
}

#[tokio::test]
async fn an_ended_sale_refuses_tokens_and_purchases() {
    let t = test_app(1.5, test_throttle()).await;
    let req = Request::post("/admin/api/sales")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from(
            json!({"id": 2, "name": "gone", "price_cents": 1, "units": 5,
            "starts_at_ms": 1, "ends_at_ms": 2, "confirm": true})
            .to_string(),
        ))
        .expect("ok");
    let (s, _, v) = t.call(req).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let c = t.login("ann").await;
    let (s, v) = t.token_load_test(&c, 2).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("ended")),
        "{v}"
    );
    let (s, v) = t.purchase(&c, 2, "whatever").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("ended")),
        "{v}"
    );
    let (_, _, v) = t
        .call(get("/api/sales/2").body(Body::empty()).expect("ok"))
        .await;
    assert_eq!(v["state"], "ended");
    let (_, _, page) = text(&t, get("/sales/2").body(Body::empty()).expect("ok")).await;
    assert!(page.contains(r#"data-state="ended""#));
}
