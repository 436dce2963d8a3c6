//! The extractors of the handlers: who is asking ([`ClientIp`], [`SessionUser`],
//! [`Admin`]), about which sale ([`SaleIdPath`]), with what body ([`JsonBody`] under the
//! [`BodyLimit`]); and the admin's authentication rules behind [`Admin`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::config::ServeLimits;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, Shared};

/// The client's address: the one the front service found behind a trusted proxy
/// (`X-Forwarded-For`, [`crate::proxy::client_addr`]), else the socket peer when served,
/// loopback under `oneshot` tests. What per-IP throttles, captchas and per-address token
/// bounds count.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return Ok(*ip);
        }
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip()),
        ))
    }
}

/// A sale id from the path; anything but a decimal `u64` is a JSON `404 not_found`.
#[derive(Debug, Clone, Copy)]
pub struct SaleIdPath(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for SaleIdPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<u64>::from_request_parts(parts, state).await {
            // The orders database keeps ids as 64-bit signed integers, so no sale has a
            // larger id: a 404 here, not a database refusal further on.
            Ok(Path(id)) if i64::try_from(id).is_ok() => Ok(SaleIdPath(id)),
            Ok(_) => Err(ApiError::not_found("no such sale")),
            Err(_) => Err(ApiError::not_found("no such sale (a sale id is a number)")),
        }
    }
}

/// JSON body with our error shape for malformed input.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// The body limit of a request, set by `Front` (`crate::front`) (default: [`ServeLimits::default`]'s).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with Content-Type: application/json",
            ));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(ServeLimits::default().body_limit_bytes, |l| l.0);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if s.is::<http_body_util::LengthLimitError>() {
                        return ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("request body over {limit} bytes"),
                        );
                    }
                    source = s.source();
                }
                ApiError::bad_request(format!("reading the body: {e}"))
            })?;
        // Every body of the API is a JSON object. serde also reads a struct from a JSON
        // array (its fields in order), so `[]` would pass as a body whose fields all have
        // defaults: refused here, before parsing (the hostile-input tests found it).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        // JSON is UTF-8 (RFC 8259): checked over the whole body, since serde skips the
        // strings of fields it ignores without looking inside them.
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        serde_json::from_str(text)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }
}

/// The user of a valid session cookie.
pub fn session_user(state: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(crate::session::cookie_from_header)
        .ok_or_else(|| ApiError::unauthorized("log in first"))?;
    state
        .sessions
        .verify(cookie, state.now_ms())
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// The user of a valid session, checked before the request body is read (so a request
/// without a session is a 401 whatever its body).
#[derive(Debug, Clone)]
pub struct SessionUser(pub String);

impl FromRequestParts<Shared> for SessionUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        session_user(state, &parts.headers).map(SessionUser)
    }
}

/// An admin request: `Authorization: Bearer <admin secret>` (checked in constant time), or
/// the admin cookie with, on anything but GET, the CSRF header and a same-site origin
/// ([`check_api`]); checked before the body is read.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        check_api(state, parts)?;
        Ok(Admin)
    }
}

/// Name of the admin cookie.
pub const ADMIN_COOKIE_NAME: &str = "admin";
/// Header carrying the CSRF token of a cookie-authenticated JSON API call.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name` in the request, if present and not empty.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| crate::session::cookie_value(v, name))
}

/// How an admin request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// `Authorization: Bearer <secret>` (API clients; no cookie, so no CSRF).
    Bearer,
    /// The admin cookie, with its nonce (browsers; POSTs need the CSRF token).
    Cookie(String),
}

fn bearer_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", state.config.admin_secret);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    !state.config.admin_secret.is_empty()
        && given.len() == expected.len()
        && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// How this request is authenticated as the admin, if it is; `Err` (429, with
/// `Retry-After`) when it carries a bearer secret (`Authorization: Bearer …`) and no valid
/// admin cookie while the global budget of admin-secret guesses ([`crate::guard`]) is
/// empty. A bearer secret is compared only after a guess is taken from that budget; a wrong
/// one spends it, a correct one gives it back. An admin signed in by cookie spends nothing,
/// and other `Authorization` schemes (a proxy's `Basic` in front of `/admin`) are not
/// guesses of the admin secret.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<AdminAuth>, ApiError> {
    if state.config.admin_secret.is_empty() {
        return Ok(None);
    }
    let by_cookie = cookie(headers, ADMIN_COOKIE_NAME)
        .and_then(|value| state.admin_key.verify(value, state.now_ms()));
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if bearer {
        let guess = match by_cookie {
            Some(_) => None,
            None => Some(
                state
                    .admin_guesses
                    .guess(state.now_ms())
                    .map_err(too_many_guesses)?,
            ),
        };
        if bearer_ok(state, headers) {
            if let Some(guess) = guess {
                guess.correct();
            }
            return Ok(Some(AdminAuth::Bearer));
        }
    }
    Ok(by_cookie.map(AdminAuth::Cookie))
}

/// 429 `throttled`: the global budget of admin-secret guesses is empty for `retry_ms`.
pub fn too_many_guesses(retry_ms: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "too many wrong admin secrets; try again later",
    )
    .retry_after_ms(retry_ms)
}

/// A form body, or `T::default()` when it is missing or malformed (the handler then
/// refuses it by its own rules: an empty secret or CSRF token); a body over the limit is
/// `413 too_large` (a form is read under the same [`BodyLimit`] as JSON: the front service
/// cuts every body there).
pub fn form_or_default<T: Default>(
    form: Result<axum::Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, ApiError> {
    match form {
        Ok(axum::Form(f)) => Ok(f),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body over the limit",
        )),
        Err(_) => Ok(T::default()),
    }
}

/// Whether the request comes from another site, by `Origin` (compared with `Host`) or,
/// without one, `Sec-Fetch-Site`. Requests with neither (API clients) are not cross-site.
pub fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or("");
        let Some(host) = host else { return true };
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        return authority != Some(host);
    }
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !matches!(v, "same-origin" | "none"))
}

/// A request not sent by another site's page ([`cross_site`]: by `Origin`, else
/// `Sec-Fetch-Site`); otherwise `403 cross_site` before anything else is read. A request
/// with neither header (an API client, not a browser) passes, as on the admin routes: a
/// browser sends `Origin` on every cross-origin POST, so only non-browser clients lack
/// both, and they hold their own cookie (no confused deputy).
#[derive(Debug, Clone, Copy)]
pub struct SameSite;

impl<S: Send + Sync> FromRequestParts<S> for SameSite {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if cross_site(&parts.headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site",
                "refused: the request came from another site",
            ));
        }
        Ok(SameSite)
    }
}

/// The rules of the admin JSON API for a request: bearer, or cookie (with the CSRF header
/// and a same-site origin on anything but GET/HEAD). Used by [`Admin`].
pub fn check_api(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    match authenticate(state, &parts.headers)? {
        Some(AdminAuth::Bearer) => Ok(()),
        Some(AdminAuth::Cookie(nonce)) => {
            if matches!(parts.method, Method::GET | Method::HEAD) {
                return Ok(());
            }
            let token = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if cross_site(&parts.headers) || !state.admin_key.csrf_ok(&nonce, token) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "cross-site request or missing CSRF token",
                ));
            }
            Ok(())
        }
        None => Err(ApiError::unauthorized("admin secret required")),
    }
}
