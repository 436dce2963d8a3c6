//! The admin dashboard's pages and its authentication.
//!
//! - **Sign-in**: `POST /admin/login` with the admin secret (compared in constant time,
//!   throttled per IP like shopper sign-ins, and by the global budget of admin-secret
//!   guesses, [`crate::guard`], that no flag turns off) sets the `admin` cookie: HttpOnly,
//!   SameSite=Strict (and `Secure` when configured),
//!   `Path=/admin`, valid [`ADMIN_SESSION_MS`], signed with a key derived from the session
//!   key *and* the admin secret ([`AdminKey`](crate::session::AdminKey)), so a shopper's cookie is never an admin's
//!   and changing the secret signs every admin out.
//! - **Every admin route** (pages and `/admin/api/*`) needs that cookie or `Authorization:
//!   Bearer <secret>`; pages without it answer 401 with the sign-in form, the JSON API 401.
//! - **CSRF**: each form carries `csrf`, an HMAC of the cookie's random nonce; a
//!   cookie-authenticated POST without the right one (a form field, or the `x-csrf-token`
//!   header for the JSON API) is 403. Any cookie-authenticated POST whose `Origin` (or
//!   `Sec-Fetch-Site`) shows another site is 403 as well, before anything is read. The
//!   sign-in form is checked the same way (no login CSRF).
//! - **Pages**: `GET /admin` (live figures, chart, workers, the live sales table with its
//!   actions, create-sale form), `POST /admin/sales`, `GET|POST /admin/sales/{id}/edit`
//!   (before the start), `GET|POST /admin/sales/{id}/{pause|resume|end|reconcile}` (a
//!   confirmation page, then the action), `GET /admin/orders?q=` (order look-up),
//!   `GET /admin/dead-letters`, the confirmation page and `POST` of replay and discard, `POST
//!   /admin/dead-letters/bulk` (selected letters or all of a topic, confirmed on a second
//!   page), `GET /admin/api/live` (the figures as JSON, see [`crate::live`]).
//! - **Forms keep what was typed** after an error, and a price of 0 or a start in the past
//!   comes back with a checkbox to confirm ([`crate::sales::needs_confirmation`]). A price
//!   with a decimal comma ("1,50") is refused, never read as 150.00 ([`parse_price`]).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use web::admin_views::{
    AdminBulkConfirmPage, AdminEditSalePage, AdminOrderRow, AdminOrdersPage, AdminSaleConfirmPage,
    SaleFormValues,
};
use web::assets::assets;
use web::views::{
    AdminDashboard, AdminLoginPage, AdminSaleRow, ConfirmPage, DeadLetterRow, DeadLettersPage,
    SaleState, SaleView,
};

use crate::extract::{AdminAuth, ClientIp, authenticate, cross_site};
use crate::state::AppState;

use crate::error::ApiError;
use crate::extract::ADMIN_COOKIE_NAME;
use crate::pages::html;
use crate::sales::NewSale;

/// The path the admin cookie is sent on.
pub const ADMIN_COOKIE_PATH: &str = "/admin";
/// How long an admin stays signed in.
pub const ADMIN_SESSION_MS: u64 = 12 * 3600 * 1000;
/// Most sales on the dashboard (the newest).
pub const DASHBOARD_SALES_MAX: usize = 50;
/// Longest payload shown for a dead letter, characters.
pub const PAYLOAD_SHOWN_MAX: usize = 300;

fn login_page(state: &AppState, status: StatusCode, error: Option<String>) -> Response {
    html(
        status,
        "no-store",
        &AdminLoginPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            error,
        },
    )
}

/// The sign-in page answering 429 with `Retry-After`.
fn too_many(state: &AppState, retry_ms: u64) -> Response {
    let retry_s = retry_ms.div_ceil(1000).max(1);
    let mut r = login_page(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        Some(format!("too many attempts; try again in {retry_s} s")),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_s));
    r
}

fn forbidden(state: &AppState, why: &str) -> Response {
    login_page(state, StatusCode::FORBIDDEN, Some(why.to_string()))
}

/// The admin's nonce for a page, or the response refusing it (401 sign-in page).
fn page_session(state: &AppState, headers: &HeaderMap) -> Result<String, Box<Response>> {
    match authenticate(state, headers) {
        Err(e) => Err(Box::new(too_many(state, retry_ms_of(&e)))),
        Ok(Some(AdminAuth::Cookie(nonce))) => Ok(nonce),
        // A bearer client gets pages too; its forms carry a token of an empty nonce.
        Ok(Some(AdminAuth::Bearer)) => Ok(String::new()),
        Ok(None) => Err(Box::new(login_page(state, StatusCode::UNAUTHORIZED, None))),
    }
}

/// The wait of a 429 from [`authenticate`], ms.
fn retry_ms_of(e: &ApiError) -> u64 {
    e.retry_after_s.unwrap_or(1).saturating_mul(1000)
}

/// For a form POST: signed in, same site, and the right `csrf` field.
fn form_session(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<(), Box<Response>> {
    if cross_site(headers) {
        return Err(Box::new(forbidden(
            state,
            "refused: the form came from another site",
        )));
    }
    match authenticate(state, headers) {
        Err(e) => Err(Box::new(too_many(state, retry_ms_of(&e)))),
        Ok(Some(AdminAuth::Bearer)) => Ok(()),
        Ok(Some(AdminAuth::Cookie(nonce))) if state.admin_key.csrf_ok(&nonce, csrf) => Ok(()),
        Ok(Some(AdminAuth::Cookie(_))) => Err(Box::new(forbidden(
            state,
            "refused: the form's CSRF token is missing or wrong; reload the page and try again",
        ))),
        Ok(None) => Err(Box::new(login_page(state, StatusCode::UNAUTHORIZED, None))),
    }
}

fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, to.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

/// `GET /admin/login`.
pub async fn login_form(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match authenticate(&state, &headers) {
        Ok(Some(_)) => return see_other("/admin"),
        Ok(None) => {}
        Err(e) => return too_many(&state, retry_ms_of(&e)),
    }
    login_page(&state, StatusCode::OK, None)
}

/// The sign-in form.
#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    secret: String,
}

/// `POST /admin/login`.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if cross_site(&headers) {
        return forbidden(&state, "refused: the form came from another site");
    }
    let now = state.now_ms();
    if let Err(t) = state
        .throttle
        .check(crate::throttle::Route::Login, None, ip, now)
    {
        return too_many(&state, t.retry_after_ms);
    }
    let secret = match crate::extract::form_or_default(form) {
        Ok(f) => f.secret,
        Err(e) => return e.into_response(),
    };
    // The global budget of guesses, which no flag turns off (crate::guard).
    let guess = match state.admin_guesses.guess(now) {
        Ok(g) => g,
        Err(retry_ms) => return too_many(&state, retry_ms),
    };
    let expected = state.config.admin_secret.as_bytes();
    if expected.is_empty()
        || secret.len() != expected.len()
        || !bool::from(secret.as_bytes().ct_eq(expected))
    {
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("wrong admin secret".to_string()),
        );
    }
    guess.correct();
    let value = state.admin_key.sign(now + ADMIN_SESSION_MS);
    let cookie = crate::session::set_cookie(
        ADMIN_COOKIE_NAME,
        &value,
        ADMIN_COOKIE_PATH,
        ADMIN_SESSION_MS / 1000,
        state.config.secure_cookies,
    );
    let mut r = see_other("/admin");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A form with only its CSRF token.
#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /admin/logout`.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = match crate::extract::form_or_default(form) {
        Ok(f) => f.csrf,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = form_session(&state, &headers, &csrf) {
        return *r;
    }
    let mut r = see_other("/admin/login");
    let cleared = crate::session::set_cookie(
        ADMIN_COOKIE_NAME,
        "",
        ADMIN_COOKIE_PATH,
        0,
        state.config.secure_cookies,
    );
    if let Ok(v) = HeaderValue::from_str(&cleared) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `?created=…` after a sale was created, `?done=…&sale=…` after an action on one.
#[derive(Debug, Deserialize)]
pub struct DashboardQuery {
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    sale: Option<u64>,
}

/// A dashboard with its create-sale form as typed and what it needs confirmed.
#[derive(Debug, Default)]
struct Typed {
    form: SaleFormValues,
    confirm: Vec<String>,
}

async fn dashboard_page(
    state: &AppState,
    nonce: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    dashboard_with(state, nonce, status, notice, error, Typed::default()).await
}

async fn dashboard_with(
    state: &AppState,
    nonce: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    typed: Typed,
) -> Response {
    let now = state.now_ms();
    let mut sales = match state.db.sales().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("the dashboard's sales: the orders database did not answer: {e}");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-store",
                &AdminLoginPage {
                    assets: assets(),
                    server_time_ms: now,
                    error: Some(
                        "the orders database did not answer; see the gateway's log".to_string(),
                    ),
                },
            );
        }
    };
    let next_id = sales.iter().map(|s| s.id).max().unwrap_or(0) + 1;
    sales.sort_by_key(|s| std::cmp::Reverse(s.id));
    sales.truncate(DASHBOARD_SALES_MAX);
    let mut rows = Vec::with_capacity(sales.len());
    for sale in sales {
        let counts = state.db.order_counts(sale.id).await.unwrap_or_default();
        let store_left = state
            .inventory
            .store()
            .stock(sale.id)
            .await
            .ok()
            .flatten()
            .map(|s| s.left);
        rows.push(AdminSaleRow {
            db_left: sale.units_left,
            store_left,
            pending: counts.pending,
            paid: counts.paid,
            cancelled: counts.cancelled,
            token_factor: format!("{}", sale.token_factor.unwrap_or(state.config.token_factor)),
            per_user_limit: sale.per_user_limit,
            admin_state: crate::sales::admin_state(&sale, now, store_left),
            sale: SaleView {
                state: SaleState::at(now, sale.starts_at_ms, sale.ends_at_ms, store_left),
                id: sale.id,
                name: sale.name,
                price_cents: sale.price_cents,
                units: sale.units,
                units_left: store_left,
                starts_at_ms: sale.starts_at_ms,
                ends_at_ms: sale.ends_at_ms,
                pay_window_ms: sale.pay_window_ms,
            },
        });
    }
    html(
        status,
        "no-store",
        &AdminDashboard {
            assets: assets(),
            server_time_ms: now,
            csrf: state.admin_key.csrf(nonce),
            sales: rows,
            notice,
            error,
            next_id,
            default_token_factor: format!("{}", state.config.token_factor),
            form: typed.form,
            confirm: typed.confirm,
        },
    )
}

/// `GET /admin`.
pub async fn dashboard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<DashboardQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nonce = match page_session(&state, &headers) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    state.live.watched(state.now_ms());
    let notice = query
        .ok()
        .and_then(|Query(q)| match (q.created, q.done, q.sale) {
            (Some(id), _, _) => Some(format!("Sale {id} created.")),
            (None, Some(done), Some(id)) => Some(match done.as_str() {
                "pause" => {
                    format!("Sale {id} paused: purchases and tokens are refused until it resumes.")
                }
                "resume" => format!("Sale {id} resumed."),
                "end" => format!("Sale {id} ended."),
                "edit" => format!("Sale {id} saved; its units are on sale again whole."),
                _ => format!("Sale {id}: done."),
            }),
            _ => None,
        });
    dashboard_page(&state, &nonce, StatusCode::OK, notice, None).await
}

/// The create-sale form (every field as typed; parsed by [`parse_sale_form`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SaleForm {
    /// CSRF token.
    pub csrf: String,
    /// Sale id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Price, `19.99`.
    pub price: String,
    /// Units.
    pub units: String,
    /// Local date-time `YYYY-MM-DDTHH:MM[:SS]`.
    pub starts_at: String,
    /// Or: seconds from now.
    pub starts_in_s: String,
    /// Seconds after the start when it ends (empty: never).
    pub ends_in_s: String,
    /// Pay window, seconds.
    pub pay_window_s: String,
    /// Units per person.
    pub per_user_limit: String,
    /// Token factor (empty: the gateway's).
    pub token_factor: String,
    /// Stock buckets in a Redis stock store (empty: 1).
    pub stock_buckets: String,
    /// The browser's `Date.getTimezoneOffset()`, minutes (UTC = local + offset).
    pub tz_offset_min: String,
    /// `starts_at` as ms since the epoch, computed by the page's script (right across
    /// daylight-saving changes); preferred when present.
    pub starts_at_ms: String,
    /// The operator confirms a price of 0 or a start in the past (a checkbox: `1`).
    pub confirm: String,
}

impl SaleForm {
    /// The fields as typed, to show the form again.
    fn values(&self) -> SaleFormValues {
        SaleFormValues {
            id: self.id.clone(),
            name: self.name.clone(),
            price: self.price.clone(),
            units: self.units.clone(),
            starts_at: self.starts_at.clone(),
            starts_at_ms: self.starts_at_ms.clone(),
            starts_in_s: self.starts_in_s.clone(),
            ends_in_s: self.ends_in_s.clone(),
            pay_window_s: self.pay_window_s.clone(),
            per_user_limit: self.per_user_limit.clone(),
            stock_buckets: self.stock_buckets.clone(),
            token_factor: self.token_factor.clone(),
        }
    }

    /// Whether the confirmation box was ticked.
    fn confirmed(&self) -> bool {
        matches!(self.confirm.trim(), "1" | "on" | "true" | "yes")
    }
}

/// Why a create-sale form was refused; the text is what the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    /// A field that must be a number is not one.
    #[error("{what}: “{value}” is not a valid number")]
    NotANumber {
        /// The field.
        what: &'static str,
        /// What was typed (trimmed).
        value: String,
    },
    /// A required field is empty.
    #[error("{0}: required")]
    Required(&'static str),
    /// The price is not an amount.
    #[error("price: “{0}” is not an amount like 19.99")]
    Price(String),
    /// The price has a comma that could be a decimal comma.
    #[error(
        "price: “{0}” has a comma: is it {1} or {2}? Write the price with a decimal point, like {1}"
    )]
    PriceComma(String, String, String),
    /// The start is not a date and time.
    #[error("start: “{0}” is not a date and time")]
    Time(String),
    /// Neither a start nor a delay was given.
    #[error("start: give a date and time or a number of seconds")]
    NoStart,
}

fn field<T: std::str::FromStr>(value: &str, what: &'static str) -> Result<Option<T>, FormError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| FormError::NotANumber {
        what,
        value: v.to_string(),
    })
}

/// Cents of a price typed as `19.99`, `19.9`, `19` or `1,299.00`. A comma is taken as a
/// thousands separator only in groups of three digits *and* with a decimal point after
/// them (`1,299.00`); any other comma (`1,50`, `1,500`) may be a decimal comma and is
/// refused with both readings, never guessed.
pub fn parse_price(text: &str) -> Result<u64, FormError> {
    let typed = text.trim();
    let bad = || FormError::Price(typed.to_string());
    if typed.contains(',') {
        let (grouped, frac) = typed.split_once('.').unwrap_or((typed, ""));
        let mut groups = grouped.split(',');
        let first_ok = groups
            .next()
            .is_some_and(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()));
        let rest_ok = groups.all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
        if !(first_ok && rest_ok && typed.contains('.')) {
            let as_decimal = typed.replacen(',', ".", 1);
            let as_decimal = if as_decimal.contains(',') {
                String::from("?")
            } else {
                as_decimal
            };
            let as_thousands: String = typed.chars().filter(|c| *c != ',').collect();
            return Err(FormError::PriceComma(
                typed.to_string(),
                as_decimal,
                as_thousands,
            ));
        }
        let _ = frac;
    }
    let t: String = typed.chars().filter(|c| *c != ',').collect();
    let (whole, frac) = t.split_once('.').unwrap_or((&t, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(100)
        .and_then(|c| c.checked_add(frac))
        .ok_or_else(bad)
}

/// Years a typed start may fall in.
const START_YEARS: std::ops::RangeInclusive<i64> = 1970..=9999;
/// Largest time zone offset accepted from the browser, minutes either way.
const TZ_OFFSET_MIN_MAX: i64 = 24 * 60;

/// Ms since the epoch of a local date-time `YYYY-MM-DDTHH:MM[:SS]` in a zone `offset_min`
/// minutes behind UTC (JavaScript's `getTimezoneOffset`). The calendar (month lengths,
/// leap years, days since the epoch) is `jiff`'s.
pub fn parse_local_time(text: &str, offset_min: i64) -> Result<u64, FormError> {
    let bad = || FormError::Time(text.to_string());
    let (date, time) = text.trim().split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    // Seconds may carry a fraction (ignored); hours and minutes may not.
    let t: Vec<i64> = time
        .split(':')
        .enumerate()
        .map(|(i, p)| {
            let p = if i == 2 {
                p.split('.').next().unwrap_or("")
            } else {
                p
            };
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        })
        .collect::<Result<_, _>>()?;
    let ([y, m, day], [hh, mm, rest @ ..]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let ss = rest.first().copied().unwrap_or(0);
    if !START_YEARS.contains(y)
        || rest.len() > 1
        || !(-TZ_OFFSET_MIN_MAX..=TZ_OFFSET_MIN_MAX).contains(&offset_min)
    {
        return Err(bad());
    }
    let small = |v: i64| i8::try_from(v).map_err(|_| bad());
    let local = jiff::civil::DateTime::new(
        i16::try_from(*y).map_err(|_| bad())?,
        small(*m)?,
        small(*day)?,
        small(*hh)?,
        small(*mm)?,
        small(ss)?,
        0,
    )
    .map_err(|_| bad())?;
    // `getTimezoneOffset` is UTC minus local time: the zone's offset is its negation.
    let offset = i32::try_from(-offset_min * 60)
        .ok()
        .and_then(|s| jiff::tz::Offset::from_seconds(s).ok())
        .ok_or_else(bad)?;
    let at = offset.to_timestamp(local).map_err(|_| bad())?;
    u64::try_from(at.as_millisecond()).map_err(|_| bad())
}

/// The sale a create-sale form describes, at `now_ms`.
pub fn parse_sale_form(f: &SaleForm, now_ms: u64) -> Result<NewSale, FormError> {
    let id = field::<u64>(&f.id, "id")?.ok_or(FormError::Required("id"))?;
    let units = field::<u64>(&f.units, "units")?.ok_or(FormError::Required("units"))?;
    let price_cents = parse_price(&f.price)?;
    let offset = field::<i64>(&f.tz_offset_min, "time zone")?.unwrap_or(0);
    let starts_at_ms = match (
        f.starts_at.trim().is_empty(),
        field::<u64>(&f.starts_in_s, "starts in")?,
    ) {
        (false, _) => match field::<u64>(&f.starts_at_ms, "start")? {
            Some(ms) => ms,
            None => parse_local_time(&f.starts_at, offset)?,
        },
        (true, Some(s)) => now_ms.saturating_add(s.saturating_mul(1000)),
        (true, None) => return Err(FormError::NoStart),
    };
    let ends_at_ms = field::<u64>(&f.ends_in_s, "ends in")?
        .map(|s| starts_at_ms.saturating_add(s.saturating_mul(1000)));
    let pay_window_ms =
        field::<u64>(&f.pay_window_s, "pay window")?.map(|s| s.saturating_mul(1000));
    let per_user_limit = field::<u32>(&f.per_user_limit, "per-user limit")?;
    let token_factor = field::<f64>(&f.token_factor, "token factor")?;
    let stock_buckets = field::<u32>(&f.stock_buckets, "stock buckets")?;
    Ok(NewSale {
        id,
        name: f.name.trim().to_string(),
        price_cents,
        units,
        starts_at_ms,
        pay_window_ms,
        ends_at_ms,
        token_factor,
        per_user_limit,
        stock_buckets,
    })
}

/// The admin's nonce of a form already checked by [`form_session`] (empty for a bearer).
fn form_nonce(state: &AppState, headers: &HeaderMap) -> String {
    match authenticate(state, headers) {
        Ok(Some(AdminAuth::Cookie(n))) => n,
        _ => String::new(),
    }
}

/// `POST /admin/sales`.
pub async fn create_sale(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<SaleForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match crate::extract::form_or_default(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = form_session(&state, &headers, &form.csrf) {
        return *r;
    }
    let nonce = form_nonce(&state, &headers);
    let refused = |status: StatusCode, error: String, confirm: Vec<String>| {
        let typed = Typed {
            form: form.values(),
            confirm,
        };
        dashboard_with(&state, &nonce, status, None, Some(error), typed)
    };
    let now = state.now_ms();
    let sale = match parse_sale_form(&form, now) {
        Ok(s) => s,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.to_string(), Vec::new()).await,
    };
    let confirm = crate::sales::needs_confirmation(sale.price_cents, sale.starts_at_ms, now);
    if !confirm.is_empty() && !form.confirmed() {
        let why = "Please confirm before the sale is created (tick the box and submit again).";
        return refused(StatusCode::UNPROCESSABLE_ENTITY, why.to_string(), confirm).await;
    }
    match crate::orders::create_sale_in(&state, &sale).await {
        Ok(created) => see_other(&format!("/admin?created={}", created.id)),
        Err(e) => refused(e.status, e.message.clone(), Vec::new()).await,
    }
}

/// Ms as a `datetime-local` value in UTC (`YYYY-MM-DDTHH:MM:SS`); the page's script shows it
/// in the browser's zone.
fn utc_local_value(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

fn edit_page(
    state: &AppState,
    nonce: &str,
    status: StatusCode,
    id: u64,
    form: SaleFormValues,
    error: Option<String>,
    confirm: Vec<String>,
) -> Response {
    html(
        status,
        "no-store",
        &AdminEditSalePage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            csrf: state.admin_key.csrf(nonce),
            id,
            form,
            error,
            confirm,
        },
    )
}

/// `GET /admin/sales/{id}/edit`.
pub async fn edit_sale_form(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    crate::extract::SaleIdPath(id): crate::extract::SaleIdPath,
) -> Response {
    let nonce = match page_session(&state, &headers) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let sale = match state.db.sale(id).await {
        Ok(Some(s)) => s,
        Ok(None) => return ApiError::not_found("no such sale").into_response(),
        Err(e) => return ApiError::unavailable_from(e).into_response(),
    };
    let now = state.now_ms();
    let error = (now >= sale.starts_at_ms || sale.ends_at_ms.is_some_and(|e| now >= e)).then(|| {
        format!(
            "Sale {id} has started (or ended): a started sale cannot be edited, since its units are being sold and buyers hold tokens for its price. Pause or end it instead."
        )
    });
    let form = SaleFormValues {
        id: id.to_string(),
        name: sale.name.clone(),
        price: web::format::price(sale.price_cents).replace(',', ""),
        units: sale.units.to_string(),
        starts_at: utc_local_value(sale.starts_at_ms),
        starts_at_ms: sale.starts_at_ms.to_string(),
        ends_in_s: sale
            .ends_at_ms
            .map(|e| {
                (e.saturating_sub(sale.starts_at_ms) / 1000)
                    .max(1)
                    .to_string()
            })
            .unwrap_or_default(),
        ..SaleFormValues::default()
    };
    edit_page(&state, &nonce, StatusCode::OK, id, form, error, Vec::new())
}

/// `POST /admin/sales/{id}/edit`: the edit form (the create form's fields, parsed alike).
pub async fn edit_sale(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    crate::extract::SaleIdPath(id): crate::extract::SaleIdPath,
    form: Result<Form<SaleForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let mut form = match crate::extract::form_or_default(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = form_session(&state, &headers, &form.csrf) {
        return *r;
    }
    let nonce = form_nonce(&state, &headers);
    form.id = id.to_string();
    let now = state.now_ms();
    let refused = |status: StatusCode, error: String, confirm: Vec<String>| {
        edit_page(
            &state,
            &nonce,
            status,
            id,
            form.values(),
            Some(error),
            confirm,
        )
    };
    let parsed = match parse_sale_form(&form, now) {
        Ok(s) => s,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.to_string(), Vec::new()),
    };
    let edit = crate::sales::SaleEdit {
        name: Some(parsed.name),
        price_cents: Some(parsed.price_cents),
        units: Some(parsed.units),
        starts_at_ms: Some(parsed.starts_at_ms),
        ends_at_ms: parsed.ends_at_ms,
        no_end: parsed.ends_at_ms.is_none(),
    };
    let confirm = crate::sales::needs_confirmation(parsed.price_cents, parsed.starts_at_ms, now);
    match crate::orders::edit_sale_in(&state, id, &edit, form.confirmed()).await {
        Ok(_) => see_other(&format!("/admin?done=edit&sale={id}")),
        Err(e) if e.code == "confirmation_needed" => refused(
            e.status,
            "Please confirm before the sale is saved (tick the box and submit again).".into(),
            confirm,
        ),
        Err(e) => refused(e.status, e.message.clone(), Vec::new()),
    }
}

/// What an action on a sale does, for its confirmation page.
fn sale_consequence(action: &str) -> Option<&'static str> {
    Some(match action {
        "pause" => {
            "Purchases and tokens are refused (409 sale_paused) until the sale resumes; purchases already queued are still decided."
        }
        "resume" => "The sale takes purchases again (if it has started and not ended).",
        "end" => {
            "The sale stops taking purchases now, for good (410 ended); orders already made stand and unpaid ones are still cancelled at their pay-by time. This cannot be undone."
        }
        "reconcile" => {
            "The stock store's figures for this sale are reset to the database's: its units left, held by the buyers with an active order."
        }
        _ => return None,
    })
}

type SaleActionPath = Result<Path<(u64, String)>, axum::extract::rejection::PathRejection>;

/// `GET /admin/sales/{id}/{action}`: "are you sure?".
pub async fn confirm_sale_action(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: SaleActionPath,
) -> Response {
    let nonce = match page_session(&state, &headers) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let Ok(Path((id, action))) = path else {
        return ApiError::not_found("no such sale").into_response();
    };
    let Some(consequence) = sale_consequence(&action) else {
        return ApiError::not_found("the actions are pause, resume, end, edit and reconcile")
            .into_response();
    };
    let sale = match state.db.sale(id).await {
        Ok(Some(s)) => s,
        Ok(None) => return ApiError::not_found("no such sale").into_response(),
        Err(e) => return ApiError::unavailable_from(e).into_response(),
    };
    let unsettled = if action == "reconcile" {
        let u = crate::sync::sale_at_rest(&state, id).await;
        (!u.at_rest()).then(|| u.to_string())
    } else {
        None
    };
    html(
        StatusCode::OK,
        "no-store",
        &AdminSaleConfirmPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            csrf: state.admin_key.csrf(&nonce),
            id,
            name: sale.name,
            action,
            consequence: consequence.to_string(),
            unsettled,
        },
    )
}

/// An action's form: its CSRF token and, for a reconcile, `force`.
#[derive(Debug, Default, Deserialize)]
pub struct SaleActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    force: String,
}

/// `POST /admin/sales/{id}/{pause|resume|end|reconcile}`.
pub async fn act_on_sale(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: SaleActionPath,
    form: Result<Form<SaleActionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match crate::extract::form_or_default(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = form_session(&state, &headers, &form.csrf) {
        return *r;
    }
    let nonce = form_nonce(&state, &headers);
    let Ok(Path((id, action))) = path else {
        return ApiError::not_found("no such sale").into_response();
    };
    if action == "reconcile" {
        let force = matches!(form.force.as_str(), "1" | "on" | "true");
        return match crate::orders::reconcile_in(&state, id, force).await {
            Ok(v) => {
                let mut notice = format!(
                    "Sale {id} reconciled: {} units, {} left, {} held by buyers with an active order.",
                    v["units"], v["left"], v["holders"]
                );
                if let Some(w) = v["warning"].as_str() {
                    notice.push_str(&format!(" Warning: {w}"));
                }
                dashboard_page(&state, &nonce, StatusCode::OK, Some(notice), None).await
            }
            Err(e) => {
                let error = format!("Sale {id} was not reconciled: {}", e.message);
                dashboard_page(&state, &nonce, e.status, None, Some(error)).await
            }
        };
    }
    match crate::orders::control_sale(&state, id, &action).await {
        Ok(_) => see_other(&format!("/admin?done={action}&sale={id}")),
        Err(e) => {
            let error = format!("Sale {id}: {action} refused: {}", e.message);
            dashboard_page(&state, &nonce, e.status, None, Some(error)).await
        }
    }
}

/// `?q=` of the order look-up page.
#[derive(Debug, Default, Deserialize)]
pub struct OrdersQuery {
    #[serde(default)]
    q: String,
}

/// `GET /admin/orders?q=`.
pub async fn orders_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nonce = match page_session(&state, &headers) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let q = query.map(|Query(q)| q.q).unwrap_or_default();
    let q = q.trim().to_string();
    let (status, orders, outcome, error) = match crate::orders::find_orders(&state, &q).await {
        Ok((orders, outcome)) => (StatusCode::OK, orders, outcome, None),
        Err(e) => (e.status, Vec::new(), None, Some(e.message.clone())),
    };
    let outcome = outcome.map(|o| match (o.order_id, o.reason) {
        (Some(order), _) => format!(
            "Ticket of {} for sale {}: ordered, order {order}.",
            o.user, o.sale
        ),
        (None, Some(reason)) => format!(
            "Ticket of {} for sale {}: rejected ({}).",
            o.user,
            o.sale,
            reason.replace('_', " ")
        ),
        (None, None) => format!("Ticket of {} for sale {}: decided.", o.user, o.sale),
    });
    html(
        status,
        "no-store",
        &AdminOrdersPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            csrf: state.admin_key.csrf(&nonce),
            query: q,
            orders: orders
                .into_iter()
                .map(|o| AdminOrderRow {
                    id: o.id,
                    ticket: o.ticket,
                    sale: o.sale,
                    user: o.user,
                    price_cents: o.price_cents,
                    status: match o.status {
                        order_worker::db::OrderStatus::Pending => "pending",
                        order_worker::db::OrderStatus::Paid => "paid",
                        order_worker::db::OrderStatus::Cancelled => "cancelled",
                    }
                    .to_string(),
                    created_ms: o.created_ms,
                    pay_by_ms: o.pay_by_ms,
                })
                .collect(),
            outcome,
            error,
            limit: order_worker::db::LOOKUP_ORDERS_MAX,
        },
    )
}

/// `?since_ms=` of the live figures.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    #[serde(default)]
    since_ms: u64,
}

/// `GET /admin/api/live`.
pub async fn live(
    State(state): State<Arc<AppState>>,
    _admin: crate::extract::Admin,
    query: Result<Query<LiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let now = state.now_ms();
    let first_look =
        now.saturating_sub(state.live.watched_at_ms()) > crate::dashboard::WATCH_WINDOW_MS;
    state.live.watched(now);
    if first_look {
        // The database was not being sampled: sample now so the first answer has it.
        crate::live::sample(&state).await;
    }
    let since = query.map_or(0, |Query(q)| q.since_ms);
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(state.live.snapshot(since, state.now_ms())),
    )
        .into_response()
}

fn letter_row(topic: &str, d: queue::DeadLetter) -> DeadLetterRow {
    let mut payload: String = String::from_utf8_lossy(&d.payload)
        .chars()
        .take(PAYLOAD_SHOWN_MAX)
        .collect();
    if d.payload.len() > payload.len() {
        payload.push('…');
    }
    DeadLetterRow {
        topic: topic.to_string(),
        dead_offset: d.dead_offset,
        group: d.group,
        original_offset: d.original_offset,
        attempts: d.attempts,
        reason: d.reason,
        dead_at_ms: d.dead_at_ms,
        payload,
    }
}

/// `?done=` after an action.
#[derive(Debug, Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

/// The dead-letters page with a notice or an error.
async fn dead_letters_page(
    state: &AppState,
    nonce: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let letters = match crate::orders::list_dead_letters(state).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let mut topics: Vec<String> = letters.iter().map(|(t, _)| t.clone()).collect();
    topics.dedup();
    html(
        status,
        "no-store",
        &DeadLettersPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            csrf: state.admin_key.csrf(nonce),
            letters: letters
                .into_iter()
                .map(|(topic, d)| letter_row(&topic, d))
                .collect(),
            notice,
            error,
            topics,
        },
    )
}

/// `GET /admin/dead-letters`.
pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<DoneQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nonce = match page_session(&state, &headers) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let notice = query
        .ok()
        .and_then(|Query(q)| q.done)
        .map(|d| match d.as_str() {
            "replay" => "Replayed: the message is back in its topic.".to_string(),
            "discard" => "Discarded.".to_string(),
            _ => "Done.".to_string(),
        });
    dead_letters_page(&state, &nonce, StatusCode::OK, notice, None).await
}

/// Most fields a bulk form carries (its letters, the CSRF token, the action).
const BULK_FORM_FIELDS_MAX: usize = crate::orders::DEAD_LETTERS_BULK_MAX + 8;

/// `POST /admin/dead-letters/bulk`: the selected letters (`letter=topic:offset`, repeated)
/// or all of a topic (`all=replay:topic`), with `action`; without `confirmed=1` it answers
/// the confirmation page, with it it acts and shows what was done and what was refused.
pub async fn dead_letters_bulk(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let fields = match crate::extract::form_or_default(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if fields.len() > BULK_FORM_FIELDS_MAX {
        return ApiError::bad_request(format!(
            "at most {} dead letters at once",
            crate::orders::DEAD_LETTERS_BULK_MAX
        ))
        .into_response();
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    if let Err(r) = form_session(&state, &headers, field("csrf")) {
        return *r;
    }
    let nonce = form_nonce(&state, &headers);
    let mut action = field("action").to_string();
    let mut selected: Vec<(String, u64)> = fields
        .iter()
        .filter(|(k, _)| k == "letter")
        .filter_map(|(_, v)| {
            let (topic, offset) = v.rsplit_once(':')?;
            Some((topic.to_string(), offset.parse().ok()?))
        })
        .collect();
    if let Some((a, topic)) = field("all").split_once(':') {
        action = a.to_string();
        selected = match crate::orders::all_of_topic(&state, topic).await {
            Ok(l) => l,
            Err(e) => return e.into_response(),
        };
    }
    if !matches!(action.as_str(), "replay" | "discard") {
        return ApiError::bad_request("action: replay or discard").into_response();
    }
    if selected.is_empty() {
        let error = "Nothing selected: tick the dead letters first.".to_string();
        return dead_letters_page(&state, &nonce, StatusCode::BAD_REQUEST, None, Some(error)).await;
    }
    if field("confirmed") != "1" {
        let letters = match crate::orders::list_dead_letters(&state).await {
            Ok(l) => l,
            Err(e) => return e.into_response(),
        };
        let rows = letters
            .into_iter()
            .filter(|(t, d)| {
                selected
                    .iter()
                    .any(|(st, so)| st == t && *so == d.dead_offset)
            })
            .map(|(t, d)| letter_row(&t, d))
            .collect();
        return html(
            StatusCode::OK,
            "no-store",
            &AdminBulkConfirmPage {
                assets: assets(),
                server_time_ms: state.now_ms(),
                csrf: state.admin_key.csrf(&nonce),
                action,
                letters: rows,
            },
        );
    }
    match crate::orders::dead_letters_bulk(&state, &action, &selected).await {
        Ok(out) => {
            let verb = if action == "replay" {
                "Replayed"
            } else {
                "Discarded"
            };
            let notice = (!out.done.is_empty()).then(|| format!("{verb} {}.", out.done.len()));
            let error = (!out.failed.is_empty()).then(|| {
                let each: Vec<String> = out
                    .failed
                    .iter()
                    .map(|(t, o, why)| format!("{t} #{o}: {why}"))
                    .collect();
                format!("{} not done: {}", out.failed.len(), each.join("; "))
            });
            dead_letters_page(&state, &nonce, StatusCode::OK, notice, error).await
        }
        Err(e) => dead_letters_page(&state, &nonce, e.status, None, Some(e.message.clone())).await,
    }
}

type LetterPath = Result<Path<(String, u64, String)>, axum::extract::rejection::PathRejection>;

/// `GET /admin/dead-letters/{topic}/{offset}/{action}`: the confirmation page.
pub async fn confirm_dead_letter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: LetterPath,
) -> Response {
    let nonce = match page_session(&state, &headers) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let Ok(Path((topic, offset, action))) = path else {
        return ApiError::not_found("no such dead letter").into_response();
    };
    if !matches!(action.as_str(), "replay" | "discard") {
        return ApiError::not_found("the actions are replay and discard").into_response();
    }
    let letters = match crate::orders::list_dead_letters(&state).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let Some((topic, letter)) = letters
        .into_iter()
        .find(|(t, d)| *t == topic && d.dead_offset == offset)
    else {
        return ApiError::not_found("no such dead letter (already replayed or discarded?)")
            .into_response();
    };
    html(
        StatusCode::OK,
        "no-store",
        &ConfirmPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            csrf: state.admin_key.csrf(&nonce),
            action,
            letter: letter_row(&topic, letter),
        },
    )
}

/// `POST /admin/dead-letters/{topic}/{offset}/{action}`.
pub async fn act_on_dead_letter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: LetterPath,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = match crate::extract::form_or_default(form) {
        Ok(f) => f.csrf,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = form_session(&state, &headers, &csrf) {
        return *r;
    }
    let Ok(Path((topic, offset, action))) = path else {
        return ApiError::not_found("no such dead letter").into_response();
    };
    match crate::orders::dead_letter_action(&state, &topic, offset, &action).await {
        Ok(_) => see_other(&format!("/admin/dead-letters?done={action}")),
        Err(e) if e.status.is_server_error() => e.into_response(),
        Err(e) => {
            let nonce = form_nonce(&state, &headers);
            let error = format!("{topic} #{offset}: not done: {}", e.message);
            dead_letters_page(&state, &nonce, e.status, None, Some(error)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices() {
        assert_eq!(parse_price("19.99"), Ok(1999));
        assert_eq!(parse_price("19.9"), Ok(1990));
        assert_eq!(parse_price("19"), Ok(1900));
        assert_eq!(parse_price(" 1,299.00 "), Ok(129_900));
        assert_eq!(parse_price("1,234,567.5"), Ok(123_456_750));
        // A comma that may be a decimal comma is refused with both readings, never guessed.
        for comma in [
            "1,50",
            "1,500",
            "19,99",
            "1,2",
            ",5",
            "1,50.00",
            "12,3456.00",
        ] {
            let e = parse_price(comma).expect_err(comma);
            assert!(matches!(e, FormError::PriceComma(..)), "{comma}: {e}");
        }
        assert_eq!(
            parse_price("1,50").expect_err("ambiguous").to_string(),
            "price: “1,50” has a comma: is it 1.50 or 150? Write the price with a decimal point, like 1.50"
        );
        for bad in [
            "",
            "-1",
            "1.999",
            "abc",
            "1.2.3",
            ".5",
            "99999999999999999999",
        ] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_times() {
        // 2026-11-27 20:00 UTC, typed in UTC and in UTC+1 (offset -60).
        assert_eq!(
            parse_local_time("2026-11-27T20:00", 0),
            Ok(1_795_809_600_000)
        );
        assert_eq!(
            parse_local_time("2026-11-27T21:00:00", -60),
            Ok(1_795_809_600_000)
        );
        assert_eq!(parse_local_time("2000-02-29T00:00", 0), Ok(951_782_400_000));
        assert_eq!(
            parse_local_time("2026-11-27T20:00:00.5", 0),
            Ok(1_795_809_600_000)
        );
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00",
            "2026-11-27T25:00",
            "x-y-zT1:2",
            "2026-02-31T00:00",
            "2026-02-29T00:00",
            "2026-11-27T20.5:00",
            "2026-11-27T+2:00",
        ] {
            assert!(parse_local_time(bad, 0).is_err(), "{bad}");
        }
        assert!(parse_local_time("2026-11-27T20:00", 100_000).is_err());
    }

    #[test]
    fn sale_forms() {
        let f = SaleForm {
            id: "7".into(),
            name: " Phone ".into(),
            price: "9.99".into(),
            units: "100".into(),
            starts_in_s: "30".into(),
            ends_in_s: "600".into(),
            pay_window_s: "120".into(),
            per_user_limit: "1".into(),
            token_factor: "2.5".into(),
            stock_buckets: "4".into(),
            ..SaleForm::default()
        };
        let s = parse_sale_form(&f, 1_000_000).expect("a valid form");
        assert_eq!(s.stock_buckets, Some(4));
        assert_eq!(
            (s.id, s.name.as_str(), s.price_cents, s.units),
            (7, "Phone", 999, 100)
        );
        assert_eq!(s.starts_at_ms, 1_030_000);
        assert_eq!(s.ends_at_ms, Some(1_630_000));
        assert_eq!(s.pay_window_ms, Some(120_000));
        assert_eq!(s.token_factor, Some(2.5));
        assert_eq!(s.per_user_limit, Some(1));
        // The page's own conversion of "starts at" wins over the zone offset.
        let typed = SaleForm {
            starts_at: "2026-11-27T21:00".into(),
            tz_offset_min: "-60".into(),
            ..SaleForm::default()
        };
        let by_offset = SaleForm {
            id: "1".into(),
            units: "1".into(),
            price: "1".into(),
            ..typed
        };
        assert_eq!(
            parse_sale_form(&by_offset, 0).map(|s| s.starts_at_ms),
            Ok(1_795_809_600_000)
        );
        let by_script = SaleForm {
            starts_at_ms: "1795809000000".into(),
            ..by_offset
        };
        assert_eq!(
            parse_sale_form(&by_script, 0).map(|s| s.starts_at_ms),
            Ok(1_795_809_000_000)
        );
        let no_start = SaleForm {
            starts_in_s: String::new(),
            ..f
        };
        assert!(
            parse_sale_form(&no_start, 0)
                .expect_err("no start")
                .to_string()
                .contains("start")
        );
        let bad_units = SaleForm {
            units: "lots".into(),
            starts_in_s: "1".into(),
            ..no_start
        };
        assert!(
            parse_sale_form(&bad_units, 0)
                .expect_err("bad units")
                .to_string()
                .contains("units")
        );
    }

    #[test]
    fn admin_cookies_and_csrf() {
        let sessions = crate::session::SessionKey::generate();
        let key = crate::session::AdminKey::derive(&sessions, "s3cret");
        let v = key.sign(2_000);
        let nonce = key.verify(&v, 1_000).expect("valid");
        assert_eq!(nonce.len(), 32);
        assert!(key.verify(&v, 2_000).is_none(), "expired");
        // A shopper's cookie is not an admin's, even for a user named like one.
        let shopper = sessions
            .sign(&format!("admin.{nonce}"), 2_000)
            .expect("a valid user id");
        assert!(key.verify(&shopper, 1_000).is_none());
        // Another admin secret, another key.
        assert!(
            crate::session::AdminKey::derive(&sessions, "other")
                .verify(&v, 1_000)
                .is_none()
        );
        let t = key.csrf(&nonce);
        assert!(key.csrf_ok(&nonce, &t));
        assert!(!key.csrf_ok(&nonce, ""));
        assert!(!key.csrf_ok("another-nonce", &t));
        assert!(!key.csrf_ok(&nonce, &t[..10]));
    }

    #[test]
    fn cross_site_by_origin_or_fetch_metadata() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h), "API clients send neither");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(!cross_site(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_site(&h));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!cross_site(&h));
    }
}
