//! Compression (gateway/src/front.rs): pages and static assets come back gzip- or
//! brotli-encoded when the client accepts it, and decode to the plain body; the API and
//! `/metrics` never do, whatever the client accepts.

use std::io::Read;

use super::*;

/// GET `uri` with this `Accept-Encoding` (none: `None`).
async fn fetch(
    t: &TestApp,
    uri: &str,
    accept: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let mut b = Request::get(uri);
    if let Some(a) = accept {
        b = b.header(header::ACCEPT_ENCODING, a);
    }
    t.call_raw(b.body(Body::empty()).expect("request")).await
}

/// `body` decoded from `encoding` (`br` or `gzip`).
fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "br" => brotli_decompressor::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .expect("brotli"),
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("gzip"),
        other => panic!("unexpected encoding {other}"),
    };
    out
}

/// A page without its `data-server-time-ms` value (the server's clock, which moves
/// between two requests).
fn without_clock(page: &[u8]) -> String {
    let s = String::from_utf8_lossy(page);
    let key = "data-server-time-ms=\"";
    match s.find(key) {
        Some(i) => {
            let rest = &s[i + key.len()..];
            let end = rest.find('"').expect("a closing quote");
            format!("{}{}", &s[..i + key.len()], &rest[end..])
        }
        None => s.into_owned(),
    }
}

#[tokio::test]
async fn pages_and_assets_are_compressed_when_accepted_and_the_api_is_not() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 10, 0).await;
    let app_js = web::assets::assets().app_js.clone();
    for uri in ["/", app_js.as_str()] {
        let (s, h, plain) = fetch(&t, uri, None).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert!(h.get(header::CONTENT_ENCODING).is_none(), "{uri}: {h:?}");
        assert!(
            plain.len() >= gateway::front::COMPRESS_MIN_BYTES as usize,
            "{uri} is big enough to compress"
        );
        for encoding in ["br", "gzip"] {
            let (s, h, body) = fetch(&t, uri, Some(encoding)).await;
            assert_eq!(s, StatusCode::OK, "{uri} {encoding}");
            assert_eq!(
                h.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
                Some(encoding.as_bytes()),
                "{uri} with Accept-Encoding: {encoding}: {h:?}"
            );
            assert!(body.len() < plain.len(), "{uri} {encoding}: smaller");
            let decoded = decode(encoding, &body);
            assert_eq!(
                without_clock(&decoded),
                without_clock(&plain),
                "{uri} {encoding}"
            );
        }
        // Both accepted: brotli, the smaller.
        let (_, h, _) = fetch(&t, uri, Some("gzip, deflate, br")).await;
        assert_eq!(
            h.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
            Some(&b"br"[..]),
            "{uri}"
        );
    }
    // The API and the metrics stay plain whatever the client accepts; /metrics is well
    // over the size threshold, so only the route rule keeps it plain.
    for uri in ["/api/sales", "/api/sales/1", "/metrics", "/healthz"] {
        let (s, h, body) = fetch(&t, uri, Some("br, gzip")).await;
        assert!(s.is_success(), "{uri}: {s}");
        assert!(
            h.get(header::CONTENT_ENCODING).is_none(),
            "{uri} is not compressed: {h:?}"
        );
        if uri == "/metrics" {
            assert!(body.len() > gateway::front::COMPRESS_MIN_BYTES as usize * 4);
            assert!(
                std::str::from_utf8(&body)
                    .expect("text")
                    .contains("gateway_")
            );
        }
    }
    // The purchase path's JSON answers stay plain too (here a refusal without a session).
    let (s, h, _) = t
        .call_raw(
            Request::post("/api/sales/1/purchase")
                .header(header::ACCEPT_ENCODING, "br, gzip")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"token":"x"}"#))
                .expect("request"),
        )
        .await;
    assert!(s.is_client_error(), "{s}");
    assert!(h.get(header::CONTENT_ENCODING).is_none(), "{h:?}");
}
