//! The gateway's HTTP error: every refusal is a status with a JSON body
//! `{"error": code, "message": ...}` (and `Retry-After` when waiting helps).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Appends `s` to `out` as a JSON string literal. Most codes and messages need no
/// escaping and are copied as they are (no allocation of their own: refusals are the
/// gateway's most common answer); the rest go through serde_json.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

/// The message of every 503 `unavailable` from a dependency's error (the error itself
/// is logged).
pub const UNAVAILABLE_MESSAGE: &str = "a service behind the gateway did not answer; try again";

/// A refusal, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`sold_out`, `throttled`, …).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after_s: Option<u64>,
    /// The purchase's ticket, when one exists whose outcome is not known yet (sent as
    /// `"ticket"`: the buyer can follow it).
    pub ticket: Option<String>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            ticket: None,
        }
    }

    /// Adds `Retry-After` (at least one second).
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_s = Some(ms.div_ceil(1000).max(1));
        self
    }

    /// Adds the ticket whose outcome is not known yet.
    pub fn with_ticket(mut self, ticket: String) -> Self {
        self.ticket = Some(ticket);
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no valid session.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 with `Retry-After`: overloaded or a dependency is unavailable.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_ms: u64) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after_ms(retry_ms)
    }

    /// 503 `unavailable`, retry in a second: a dependency could not answer. Also for the
    /// orders database's reads, where even an `Invalid` error comes from the stored data
    /// (or an id out of its range), not from anything the client could fix. The error is
    /// logged; the body carries only [`UNAVAILABLE_MESSAGE`] (a database's or queue's own
    /// text names tables, hosts and settings no client should see).
    pub fn unavailable_from(e: impl std::fmt::Display) -> Self {
        tracing::warn!("a dependency did not answer: {e}");
        ApiError::unavailable("unavailable", UNAVAILABLE_MESSAGE, 1000)
    }

    /// 410: the sale has ended.
    pub fn ended() -> Self {
        ApiError::new(StatusCode::GONE, "ended", "the sale has ended")
    }

    /// 500: logged in full, shown to the client without details.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Written directly (no JSON tree): refusals are the gateway's most common answer.
        let mut body = String::with_capacity(32 + self.code.len() + self.message.len());
        body.push_str("{\"error\":");
        push_json_string(&mut body, self.code);
        body.push_str(",\"message\":");
        push_json_string(&mut body, &self.message);
        if let Some(t) = &self.ticket {
            body.push_str(",\"ticket\":");
            push_json_string(&mut body, t);
        }
        body.push('}');
        let mut resp = json_response(self.status, Body::from(body));
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// A response with this status, `Content-Type: application/json` and this body, built
/// field by field: what `(status, [(CONTENT_TYPE, …)], body).into_response()` gives (a
/// test holds it to that), without axum's `text/plain` header written and then replaced.
fn json_response(status: StatusCode, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The body of every `410 sold_out` refusal: constant, so the flash crowd's most common
/// answer is sent from a static buffer (no allocation, nothing written per request).
pub const SOLD_OUT_BODY: &str = r#"{"error":"sold_out","message":"sold out"}"#;

impl ApiError {
    /// 410 `sold_out`: no unit of the sale is left. Its response is [`sold_out_response`]'s.
    pub fn sold_out() -> Self {
        ApiError::new(StatusCode::GONE, "sold_out", "sold out")
    }
}

/// The length of [`SOLD_OUT_BODY`], as `Content-Length` writes it.
pub const SOLD_OUT_LENGTH: &str = "41";

/// The response of [`ApiError::sold_out`], from [`SOLD_OUT_BODY`], with the
/// `Content-Length` axum's router would add to it (so that the front service's fast path
/// answers with the router's bytes without formatting a number): a test holds the two to
/// the same bytes.
pub fn sold_out_response() -> Response {
    let mut resp = json_response(
        StatusCode::GONE,
        Body::from(bytes::Bytes::from_static(SOLD_OUT_BODY.as_bytes())),
    );
    resp.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_static(SOLD_OUT_LENGTH),
    );
    resp
}

// The domain errors as the client sees them, so that handlers write `?`. A dependency that
// cannot answer is a 503 `unavailable` with `Retry-After: 1`; input the domain refuses is a
// 4xx.

/// The ledger of purchase tokens could not answer: 503, try again in a second.
impl From<crate::ledger::LedgerError> for ApiError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        ApiError::unavailable_from(e)
    }
}

/// The orders database: an argument it refuses is a 400, a conflict a 409 (the caller
/// names it better where it knows what exists, e.g. `sale_exists`), anything else a 503.
impl From<order_worker::DbError> for ApiError {
    fn from(e: order_worker::DbError) -> Self {
        match e {
            order_worker::DbError::Invalid(m) => ApiError::bad_request(m),
            order_worker::DbError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            order_worker::DbError::Constraint { constraint } => constraint_violation(&constraint),
            other => ApiError::unavailable_from(other),
        }
    }
}

/// A constraint of the orders database refused a change a person asked for (creating a
/// sale, paying an order): a 4xx chosen by the constraint's name (the names are listed on
/// `order_worker::DbError::Constraint`), never a 503, whose "try again" would only be
/// refused again. PostgreSQL names the constraint; SQLite names the column (`sales.id`).
fn constraint_violation(constraint: &str) -> ApiError {
    match constraint {
        // Two admins creating the same sale at once: the second insert loses the race.
        "sales_pkey" | "sales.id" => ApiError::new(
            StatusCode::CONFLICT,
            "sale_exists",
            "a sale with this id exists",
        ),
        // A sale setting the database refuses (the checks before the insert should have).
        c if c.starts_with("sales") => {
            ApiError::bad_request(format!("the sale's settings break the rule {c}"))
        }
        c => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("the database refused the change (rule {c})"),
        ),
    }
}

/// The stock store could not answer: 503.
impl From<inventory::Error> for ApiError {
    fn from(e: inventory::Error) -> Self {
        ApiError::unavailable_from(e)
    }
}

/// The queue: an unknown dead letter is a 404; anything else a 503.
impl From<queue::Error> for ApiError {
    fn from(e: queue::Error) -> Self {
        match e {
            queue::Error::NoSuchDeadLetter { .. } => ApiError::not_found(e.to_string()),
            other => ApiError::unavailable_from(other),
        }
    }
}

/// A captcha answer that does not pass is a 403 `bad_captcha`, or `captcha_expired` when
/// the captcha was older than its time to live (the shopper was slow, not wrong); a captcha
/// store that cannot make one now (too many outstanding, or the image failed) is a 503
/// `busy`.
impl From<crate::captcha::CaptchaError> for ApiError {
    fn from(e: crate::captcha::CaptchaError) -> Self {
        use crate::captcha::CaptchaError;
        match e {
            CaptchaError::Busy | CaptchaError::Image => {
                ApiError::unavailable("busy", e.to_string(), 1000)
            }
            CaptchaError::Expired => ApiError::new(
                StatusCode::FORBIDDEN,
                "captcha_expired",
                "the check expired; here is a new one",
            ),
            other => ApiError::new(StatusCode::FORBIDDEN, "bad_captcha", other.to_string()),
        }
    }
}

/// A purchase token that does not pass is a 403 `bad_token`.
impl From<crate::token::TokenError> for ApiError {
    fn from(e: crate::token::TokenError) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "bad_token", e.to_string())
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy-as-is path writes exactly what serde_json writes, and anything needing
    /// escapes (quotes, backslashes, control characters) or outside printable ASCII goes
    /// through serde_json.
    #[test]
    fn json_strings_are_what_serde_json_writes() {
        for s in [
            "",
            "sold out",
            "the sale starts at 1800000000000",
            "quote \" inside",
            "back\\slash",
            "line\nbreak",
            "tab\tand\u{1}",
            "del\u{7f}",
            "caf\u{e9} \u{1f600}",
            "</script>",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).expect("a string"), "{s:?}");
        }
    }

    /// Status, headers (in order) and body of a response.
    async fn parts(resp: Response) -> (StatusCode, Vec<(String, Vec<u8>)>, bytes::Bytes) {
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, headers, body)
    }

    /// The response built field by field is what axum's tuple built before it (issue 19):
    /// the same status, the same headers in the same order, the same body.
    #[tokio::test]
    async fn the_response_is_what_axums_tuple_builds() {
        let errors = [
            ApiError::sold_out(),
            ApiError::not_found("no sale 7"),
            ApiError::new(StatusCode::TOO_EARLY, "not_started", "the sale starts at 5")
                .retry_after_ms(1),
            ApiError::unavailable("outcome_unknown", "follow \"it\"", 2500)
                .with_ticket("t-1".into()),
            ApiError::new(StatusCode::GONE, "ended", "caf\u{e9}").retry_after_ms(u64::MAX),
        ];
        for e in errors {
            let mut body = String::from("{\"error\":");
            push_json_string(&mut body, e.code);
            body.push_str(",\"message\":");
            push_json_string(&mut body, &e.message);
            if let Some(t) = &e.ticket {
                body.push_str(",\"ticket\":");
                push_json_string(&mut body, t);
            }
            body.push('}');
            let mut old = (
                e.status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response();
            if let Some(s) = e.retry_after_s {
                old.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&s.to_string()).expect("digits"),
                );
            }
            let (old_hint, new_resp) = (
                axum::body::HttpBody::size_hint(old.body()).exact(),
                e.clone().into_response(),
            );
            assert_eq!(
                axum::body::HttpBody::size_hint(new_resp.body()).exact(),
                old_hint,
                "{e:?}"
            );
            assert_eq!(parts(new_resp).await, parts(old).await, "{e:?}");
        }
    }

    /// The static sold-out answer is `ApiError::sold_out`'s, byte for byte, with the
    /// `Content-Length` the router adds to it.
    #[tokio::test]
    async fn the_static_sold_out_answer_is_the_errors() {
        assert_eq!(SOLD_OUT_LENGTH, SOLD_OUT_BODY.len().to_string());
        let fixed = sold_out_response();
        let mut built = ApiError::sold_out().into_response();
        built.headers_mut().insert(
            header::CONTENT_LENGTH,
            HeaderValue::from_str(&SOLD_OUT_BODY.len().to_string()).expect("digits"),
        );
        assert_eq!(
            axum::body::HttpBody::size_hint(fixed.body()).exact(),
            Some(SOLD_OUT_BODY.len() as u64)
        );
        assert_eq!(parts(fixed).await, parts(built).await);
    }

    #[tokio::test]
    async fn the_body_is_json_with_code_and_escaped_message() {
        let resp = ApiError::new(StatusCode::GONE, "sold_out", "quote \" and \\ and \n end")
            .retry_after_ms(1500)
            .into_response();
        assert_eq!(resp.status(), StatusCode::GONE);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            resp.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(v["error"], "sold_out");
        assert_eq!(v["message"], "quote \" and \\ and \n end");
    }

    #[test]
    fn unavailable_bodies_never_carry_the_dependencys_text() {
        let secret_text = "connection to postgres://admin:pw@db.internal:5432 refused";
        let errors = [
            ApiError::unavailable_from(secret_text),
            // The database's own text (any error that is not the client's to fix).
            ApiError::from(order_worker::DbError::Raced(7)),
            ApiError::from(queue::Error::Connection(secret_text.into())),
        ];
        for e in errors {
            assert_eq!(
                (e.status, e.code, e.message.as_str(), e.retry_after_s),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    UNAVAILABLE_MESSAGE,
                    Some(1)
                )
            );
        }
    }

    #[test]
    fn an_expired_captcha_is_not_a_wrong_one() {
        use crate::captcha::CaptchaError;
        let e = ApiError::from(CaptchaError::Expired);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "captcha_expired")
        );
        for wrong in [CaptchaError::Wrong, CaptchaError::Unknown] {
            let e = ApiError::from(wrong);
            assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "bad_captcha"));
        }
    }

    #[test]
    fn constraint_violations_are_4xx_by_name_never_a_retry() {
        let by_name = |c: &str| {
            ApiError::from(order_worker::DbError::Constraint {
                constraint: c.into(),
            })
        };
        // The sale id taken, as PostgreSQL and as SQLite name it.
        for c in ["sales_pkey", "sales.id"] {
            let e = by_name(c);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::CONFLICT, "sale_exists"),
                "{c}"
            );
        }
        let e = by_name("sales_price_cents_check");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("sales_price_cents_check"),
            "{}",
            e.message
        );
        let e = by_name("orders_check");
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "conflict"));
        assert_eq!(e.retry_after_s, None);
    }
}
