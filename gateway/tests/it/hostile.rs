//! Hostile input (issue 16): property tests that send arbitrary bytes and JSON-ish values to
//! every route that reads a body, and arbitrary strings to the session, token and admin
//! cookie parsers, through `oneshot` on the real app. What must hold: no panic (a panic in
//! a handler would fail the call or the test), never a 5xx, and every input that cannot be
//! what the route asks for is a 4xx (never a 2xx for garbage).
//!
//! Case counts are bounded so the suite stays fast: [`CASES_DEFAULT`] per property, or
//! `PROPTEST_CASES` from the environment for a longer run. Each property prints how many
//! cases it ran (`cargo test -p gateway --test it hostile -- --nocapture`).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::config::LOAD_TEST_HEADER;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use super::{ADMIN, LOAD_TEST, TestApp, test_app, test_throttle};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES_DEFAULT: u32 = 200;
/// Longest arbitrary body, bytes (under the default body limit, so the parsers see it).
const BODY_BYTES_MAX: usize = 600;
/// The sale the routes are tried on.
const SALE: u64 = 1;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        // The failing input is printed with the failure; no regression file is written
        // into the source tree.
        failure_persistence: None,
        ..Config::default()
    })
}

/// A current-thread runtime for the async app inside the synchronous proptest runner.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The app with sale [`SALE`] open, and a signed-in shopper's cookie.
fn app_with_sale(rt: &tokio::runtime::Runtime) -> (TestApp, String) {
    rt.block_on(async {
        let t = test_app(1.5, test_throttle()).await;
        t.create_sale(SALE, 1000, 0).await;
        let cookie = t.login("hostile-shopper").await;
        (t, cookie)
    })
}

/// Arbitrary JSON-ish values: scalars, strings, arrays and objects nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names: those the routes read, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "user",
            "token",
            "captcha_id",
            "answer",
            "id",
            "name",
            "price_cents",
            "units",
            "starts_at_ms",
            "pay_window_ms",
            "ends_at_ms",
            "token_factor",
            "per_user_limit",
            "stock_buckets",
        ])
        .prop_map(String::from),
        "[a-z_]{0,12}",
    ]
}

/// A value of a JSON type other than `kind` (`"string"`, `"u64"`, `"object"`).
fn wrong_type(kind: &'static str) -> impl Strategy<Value = Value> {
    json_value().prop_filter("a value of another type", move |v| match kind {
        "string" => !v.is_string(),
        "u64" => !v.is_u64(),
        _ => !v.is_object(),
    })
}

/// One route that takes a JSON body: its path and the headers that get a request past
/// authentication to the body.
struct JsonRoute {
    path: String,
    /// (header, value) pairs.
    headers: Vec<(String, String)>,
    /// The fields the body needs, each with its JSON type (for the wrong-typed objects).
    required: Vec<(&'static str, &'static str)>,
}

fn json_routes(cookie: &str) -> Vec<JsonRoute> {
    let shopper = vec![(header::COOKIE.to_string(), cookie.to_string())];
    let mut load_test = shopper.clone();
    load_test.push((LOAD_TEST_HEADER.to_string(), LOAD_TEST.to_string()));
    vec![
        JsonRoute {
            path: "/api/login".into(),
            headers: vec![],
            required: vec![("user", "string")],
        },
        JsonRoute {
            path: format!("/api/sales/{SALE}/token"),
            headers: shopper.clone(),
            required: vec![("captcha_id", "string"), ("answer", "string")],
        },
        JsonRoute {
            // In load-test mode the token route reads a body too (and skips the captcha).
            path: format!("/api/sales/{SALE}/token"),
            headers: load_test,
            required: vec![],
        },
        JsonRoute {
            path: format!("/api/sales/{SALE}/purchase"),
            headers: shopper,
            required: vec![("token", "string")],
        },
        JsonRoute {
            path: "/admin/api/sales".into(),
            headers: vec![(header::AUTHORIZATION.to_string(), format!("Bearer {ADMIN}"))],
            required: vec![
                ("id", "u64"),
                ("name", "string"),
                ("price_cents", "u64"),
                ("units", "u64"),
                ("starts_at_ms", "u64"),
            ],
        },
    ]
}

async fn post(
    t: &TestApp,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    json: bool,
) -> (StatusCode, Value) {
    let mut b = Request::post(path);
    if json {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let (status, _, bytes) = t
        .call_raw(b.body(Body::from(body)).expect("a request"))
        .await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The status classes seen, for the report.
#[derive(Default)]
struct Seen {
    cases: AtomicU64,
    ok: AtomicU64,
    client_error: AtomicU64,
}

impl Seen {
    fn note(&self, status: StatusCode) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        if status.is_success() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else if status.is_client_error() {
            self.client_error.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(&self, what: &str) {
        eprintln!(
            "hostile input: {what}: {} cases, {} answered 2xx, {} answered 4xx",
            self.cases.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.client_error.load(Ordering::Relaxed)
        );
    }
}

/// Arbitrary bytes (with and without a JSON content type) to every JSON route: never a
/// 5xx; bytes that are not a JSON object are always a 4xx.
#[test]
fn arbitrary_bytes_to_every_json_route_get_a_4xx() {
    let rt = runtime();
    let (t, cookie) = app_with_sale(&rt);
    let routes = json_routes(&cookie);
    let seen = Seen::default();
    let strategy = (
        0..routes.len(),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..BODY_BYTES_MAX),
            // Near-JSON: a valid document cut or with a byte changed.
            (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
                let mut b = serde_json::to_vec(&v).unwrap_or_default();
                if !b.is_empty() {
                    let i = at.index(b.len());
                    if byte % 2 == 0 {
                        b.truncate(i);
                    } else {
                        b[i] = byte;
                    }
                }
                b
            }),
        ],
        any::<bool>(),
    );
    runner()
        .run(&strategy, |(route, body, json)| {
            let r = &routes[route];
            let object = serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object());
            let (status, answer) = rt.block_on(post(&t, &r.path, &r.headers, body.clone(), json));
            seen.note(status);
            prop_assert!(
                !status.is_server_error(),
                "{} answered {status} {answer} to {:?}",
                r.path,
                String::from_utf8_lossy(&body)
            );
            if !object || !json {
                prop_assert!(
                    status.is_client_error(),
                    "{} answered {status} {answer} to garbage {:?} (json content type: {json})",
                    r.path,
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        })
        .expect("every garbage body gets a 4xx");
    seen.report("arbitrary bytes to the JSON routes");
}

/// JSON-ish values of any shape to every JSON route: never a 5xx; anything but an object,
/// and an object whose required field has the wrong type, is a 4xx. (An object of the
/// right shape may be accepted: that is a valid request, not garbage.)
#[test]
fn json_values_of_any_shape_never_get_a_5xx_and_wrong_shapes_a_4xx() {
    let rt = runtime();
    let (t, cookie) = app_with_sale(&rt);
    let routes = json_routes(&cookie);
    let seen = Seen::default();
    let strategy = (
        0..routes.len(),
        json_value(),
        any::<prop::sample::Index>(),
        wrong_type("string"),
        wrong_type("u64"),
    );
    runner()
        .run(&strategy, |(route, value, pick, not_string, not_u64)| {
            let r = &routes[route];
            // Half the cases: the value itself; the other half: an object with every
            // required field, one of them of the wrong type.
            let (body, garbage) = if r.required.is_empty() || pick.index(2) == 0 {
                let garbage = !value.is_object();
                (value, garbage)
            } else {
                let mut obj = match value {
                    Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                let wrong = pick.index(r.required.len());
                for (i, (field, kind)) in r.required.iter().enumerate() {
                    let v = if i == wrong {
                        if *kind == "string" {
                            not_string.clone()
                        } else {
                            not_u64.clone()
                        }
                    } else if *kind == "string" {
                        json!("x")
                    } else {
                        json!(1)
                    };
                    obj.insert((*field).to_string(), v);
                }
                (Value::Object(obj), true)
            };
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let (status, answer) = rt.block_on(post(&t, &r.path, &r.headers, bytes, true));
            seen.note(status);
            prop_assert!(
                !status.is_server_error(),
                "{} answered {status} {answer} to {body}",
                r.path
            );
            if garbage {
                prop_assert!(
                    status.is_client_error(),
                    "{} answered {status} {answer} to the wrong shape {body}",
                    r.path
                );
            }
            Ok(())
        })
        .expect("no JSON value gets a 5xx");
    seen.report("JSON-ish values to the JSON routes");
}

/// Arbitrary form bodies to the admin sign-in form: never a 5xx, never signed in.
#[test]
fn arbitrary_forms_to_the_admin_sign_in_get_a_4xx() {
    let rt = runtime();
    let (t, _) = app_with_sale(&rt);
    let seen = Seen::default();
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..BODY_BYTES_MAX),
        ("[a-z_=&%0-9]{0,20}", ".{0,60}").prop_map(|(k, v)| format!("{k}secret={v}").into_bytes()),
    ];
    runner()
        .run(&strategy, |body| {
            let req = Request::post("/admin/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body.clone()))
                .expect("a request");
            let (status, headers, _) = rt.block_on(t.call_raw(req));
            seen.note(status);
            prop_assert!(
                status.is_client_error(),
                "/admin/login answered {status} to {:?}",
                String::from_utf8_lossy(&body)
            );
            prop_assert!(
                headers.get(header::SET_COOKIE).is_none(),
                "signed in by garbage"
            );
            Ok(())
        })
        .expect("every garbage form gets a 4xx");
    seen.report("forms to /admin/login");
}

/// A valid session cookie, token or admin cookie with its bytes changed, cut or extended
/// is refused by its parser, and arbitrary strings never verify; none panics.
#[test]
fn the_session_token_and_admin_cookie_parsers_refuse_every_changed_value() {
    let rt = runtime();
    let (t, cookie) = app_with_sale(&rt);
    let state = t.state.clone();
    let now = state.now_ms();
    let session = gateway::session::cookie_from_header(&cookie)
        .expect("a session cookie")
        .to_string();
    let (token, _) = state.tokens.issue("hostile-shopper", SALE, now + 60_000);
    let admin = state.admin_key.sign(now + 60_000);
    let originals = [session, token, admin];
    let cases = AtomicU64::new(0);
    let strategy = (
        0..originals.len(),
        prop_oneof![
            // A change of one byte.
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, b)| (0u8, at, vec![b])),
            // A cut.
            any::<prop::sample::Index>().prop_map(|at| (1u8, at, vec![])),
            // Bytes appended.
            (
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<u8>(), 1..40)
            )
                .prop_map(|(at, b)| (2u8, at, b)),
            // Something else entirely.
            (
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<u8>(), 0..600)
            )
                .prop_map(|(at, b)| (3u8, at, b)),
        ],
    );
    runner()
        .run(&strategy, |(which, (how, at, bytes))| {
            cases.fetch_add(1, Ordering::Relaxed);
            let original = &originals[which];
            let mut v = original.clone().into_bytes();
            match how {
                0 => {
                    let i = at.index(v.len());
                    v[i] = bytes[0];
                }
                1 => v.truncate(at.index(v.len())),
                2 => v.extend_from_slice(&bytes),
                _ => v = bytes,
            }
            let s = String::from_utf8_lossy(&v).into_owned();
            if s == *original {
                return Ok(());
            }
            prop_assert!(
                state.sessions.verify(&s, now).is_err(),
                "session accepted {s:?}"
            );
            prop_assert!(
                state
                    .tokens
                    .verify(&s, "hostile-shopper", SALE, now)
                    .is_err(),
                "token accepted {s:?}"
            );
            prop_assert!(
                state.admin_key.verify(&s, now).is_none(),
                "admin cookie accepted {s:?}"
            );
            // The header parsers see it too, as a whole header and as a cookie's value.
            let _ = gateway::session::cookie_from_header(&s);
            let _ = gateway::session::cookie_value(&format!("a=1; admin={s}; b"), "admin");
            Ok(())
        })
        .expect("no changed value verifies");
    eprintln!(
        "hostile input: changed session/token/admin-cookie values: {} cases, none verified",
        cases.load(Ordering::Relaxed)
    );
}

/// Arbitrary `Cookie` and `Authorization` headers on the routes behind a session or the
/// admin: a 4xx, never a 5xx and never a 2xx.
#[test]
fn arbitrary_cookies_and_bearers_get_a_4xx() {
    let rt = runtime();
    let (t, _) = app_with_sale(&rt);
    let seen = Seen::default();
    let header_text = prop_oneof![
        "[ -~]{0,200}",
        "[ -~]{0,40}".prop_map(|v| format!("seckill_session={v}")),
        "[ -~]{0,40}".prop_map(|v| format!("a=b; admin={v}; seckill_session=\"{v}\"")),
        "[ -~]{0,80}".prop_map(|v| format!("Bearer {v}")),
    ];
    let strategy = (0..4usize, header_text);
    runner()
        .run(&strategy, |(route, value)| {
            let (method, path, header_name) = match route {
                0 => ("POST", format!("/api/sales/{SALE}/token"), header::COOKIE),
                1 => (
                    "GET",
                    "/api/orders/0190aaaa-0000-7000-8000-000000000000".to_string(),
                    header::COOKIE,
                ),
                2 => ("GET", "/admin/api/sales".to_string(), header::COOKIE),
                _ => ("GET", "/admin/api/sales".to_string(), header::AUTHORIZATION),
            };
            let Ok(req) = Request::builder()
                .method(method)
                .uri(&path)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header_name.clone(), value.as_str())
                .body(Body::from("{}"))
            else {
                // Not a valid header value: hyper would not have parsed such a request.
                return Ok(());
            };
            let (status, _, body) = rt.block_on(t.call_raw(req));
            seen.note(status);
            prop_assert!(
                status.is_client_error(),
                "{method} {path} with {header_name}: {value:?} answered {status} {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        })
        .expect("every forged cookie or bearer gets a 4xx");
    seen.report("cookies and bearers");
}

/// Found by the property tests above: serde reads a struct from a JSON array too, so `[]`
/// passed as the body of a load-test token request (every field has a default) and got a
/// token, and `[id, name, …]` could create a sale; and serde skips an ignored field's
/// string without checking its UTF-8, so a body that is not JSON at all got a token too.
/// Every body is a JSON object in UTF-8; anything else is a 400.
#[tokio::test]
async fn a_json_array_is_not_a_body() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(SALE, 10, 0).await;
    let cookie = t.login("array-sender").await;
    let mut load_test = vec![(header::COOKIE.to_string(), cookie.clone())];
    load_test.push((LOAD_TEST_HEADER.to_string(), LOAD_TEST.to_string()));
    let token_path = format!("/api/sales/{SALE}/token");
    for body in ["[]", " [\"id\", \"answer\"]", "\"{}\""] {
        let (status, v) = post(&t, &token_path, &load_test, body.into(), true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    // An unknown field whose string is not UTF-8.
    let mut not_utf8 = br#"{"note":"a"#.to_vec();
    not_utf8.extend_from_slice(&[0xF1, 0xA1, b'}', 0xA0]);
    not_utf8.extend_from_slice(br#""}"#);
    let (status, v) = post(&t, &token_path, &load_test, not_utf8, true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let admin = vec![(header::AUTHORIZATION.to_string(), format!("Bearer {ADMIN}"))];
    let (status, v) = post(
        &t,
        "/admin/api/sales",
        &admin,
        br#"[7, "phone", 100, 5, 0, 60000, null, null, null]"#.to_vec(),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // The same requests as objects are served.
    let (status, v) = post(&t, &token_path, &load_test, b" {}".to_vec(), true).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}
