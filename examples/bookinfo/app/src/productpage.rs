//! The productpage service (Python in the original): the web page users see, which calls
//! details and reviews, plus a small JSON API and a cookie login.
//!
//! ```text
//! GET /productpage ──┬─ details  GET /details/0  (3 s timeout, 2 tries) ─┬─ render page
//!                    └─ reviews  GET /reviews/0  (3 s timeout, 2 tries) ─┘
//!                         failure (error, timeout or non-200, twice) → the error texts
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tracing::warn;

use crate::client::{Client, ErrorChain, Peer, propagated_headers};
use crate::server::{self, Body, HEALTH_PATH, Handler};

mod page;

/// Timeout of each try of a call to details, reviews or ratings, connect included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Tries of each call to details and reviews (the original retries reviews once on purpose:
/// a 7 s delay injected into ratings makes reviews slow, and the page gives up after ~6 s).
pub const CALL_TRIES: u32 = 2;

/// The title of the one product.
pub const TITLE: &str = "The Comedy of Errors";

/// Page text when details failed.
pub const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";

/// Page text when reviews failed.
pub const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";

/// API text when ratings failed.
pub const RATINGS_ERROR: &str = "Sorry, product ratings are currently unavailable for this book.";

/// The cookie that holds the signed-in user.
pub const USER_COOKIE: &str = "user";

/// Largest login form accepted.
const MAX_FORM: usize = 16 * 1024;

const DESCRIPTION_HTML: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">\
Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> earliest and \
shortest plays, a fast farce about two pairs of identical twins separated at birth, whose comedy \
comes mostly from slapstick and mistaken identity, with puns and word play besides.";

/// Configuration of a productpage service.
#[derive(Debug, Clone)]
pub struct Config {
    /// The details service (`--details`, default `http://details:9080`).
    pub details: Peer,
    /// The reviews service (`--reviews`, default `http://reviews:9080`).
    pub reviews: Peer,
    /// The ratings service, used only by `/api/v1/products/{id}/ratings` (`--ratings`, default
    /// `http://ratings:9080`).
    pub ratings: Peer,
    /// How calls are made (`--proxy`).
    pub client: Client,
}

/// An entry of `GET /api/v1/products`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Product {
    /// Product id, always 0.
    pub id: i64,
    /// Book title.
    pub title: &'static str,
    /// One-paragraph summary, as HTML.
    #[serde(rename = "descriptionHtml")]
    pub description_html: &'static str,
}

/// The one product in the store.
pub fn product() -> Product {
    Product {
        id: 0,
        title: TITLE,
        description_html: DESCRIPTION_HTML,
    }
}

/// Serves the page, the API and login on `listener` until dropped.
pub async fn serve(listener: TcpListener, config: Config) {
    server::serve("productpage", listener, ProductPage { config }).await;
}

struct ProductPage {
    config: Config,
}

/// A call that failed on every try; `status` is the last reply's status, or 500 without one.
struct Failed {
    status: StatusCode,
}

enum ApiRoute {
    Products,
    Product(i64),
    Reviews(i64),
    Ratings(i64),
}

impl Handler for ProductPage {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match (path.as_str(), method == Method::GET) {
            ("/" | "/index.html", true) => server::html(StatusCode::OK, page::index()),
            (HEALTH_PATH, true) => server::text(StatusCode::OK, "Product page is healthy"),
            ("/productpage", true) => self.product_page(request.headers()).await,
            ("/login", _) if method == Method::POST => login(request).await,
            ("/logout", true) => logout(),
            ("/" | "/index.html" | HEALTH_PATH | "/productpage" | "/login" | "/logout", _) => {
                server::method_not_allowed()
            }
            _ => match api_route(&path) {
                None => server::not_found(),
                Some(_) if method != Method::GET => server::method_not_allowed(),
                Some(route) => self.api(route, request.headers()).await,
            },
        }
    }
}

impl ProductPage {
    async fn product_page(&self, incoming: &HeaderMap) -> Response<Body> {
        let user = signed_in_user(incoming);
        let headers = outgoing_headers(incoming, user.as_deref());
        let product = product();
        let details_path = format!("/details/{}", product.id);
        let reviews_path = format!("/reviews/{}", product.id);
        let (details, reviews) = tokio::join!(
            self.fetch::<serde_json::Map<String, serde_json::Value>>(
                &self.config.details,
                &details_path,
                &headers,
                CALL_TRIES,
            ),
            self.fetch::<page::ReviewsBody>(&self.config.reviews, &reviews_path, &headers, CALL_TRIES),
        );
        let page = page::product_page(&page::Model {
            user: user.as_deref(),
            product: &product,
            details: details.ok().as_ref(),
            reviews: reviews.ok().as_ref(),
        });
        server::html(StatusCode::OK, page)
    }

    async fn api(&self, route: ApiRoute, incoming: &HeaderMap) -> Response<Body> {
        let user = signed_in_user(incoming);
        let headers = outgoing_headers(incoming, user.as_deref());
        let (peer, path, tries, error) = match route {
            ApiRoute::Products => return server::json(StatusCode::OK, &[product()]),
            ApiRoute::Product(id) => (
                &self.config.details,
                format!("/details/{id}"),
                CALL_TRIES,
                DETAILS_ERROR,
            ),
            ApiRoute::Reviews(id) => (
                &self.config.reviews,
                format!("/reviews/{id}"),
                CALL_TRIES,
                REVIEWS_ERROR,
            ),
            ApiRoute::Ratings(id) => (&self.config.ratings, format!("/ratings/{id}"), 1, RATINGS_ERROR),
        };
        match self.fetch::<serde_json::Value>(peer, &path, &headers, tries).await {
            Ok(value) => server::json(StatusCode::OK, &value),
            Err(Failed { status }) => server::json_error(status, error),
        }
    }

    /// `GET {peer}{path}` up to `tries` times; succeeds on a 200 whose body parses as `T`.
    async fn fetch<T: DeserializeOwned>(
        &self,
        peer: &Peer,
        path: &str,
        headers: &HeaderMap,
        tries: u32,
    ) -> Result<T, Failed> {
        let mut status = StatusCode::INTERNAL_SERVER_ERROR;
        for attempt in 1..=tries {
            match self.config.client.get(peer, path, headers, CALL_TIMEOUT).await {
                Ok(reply) if reply.status == StatusCode::OK => match serde_json::from_slice(&reply.body) {
                    Ok(value) => return Ok(value),
                    Err(error) => {
                        warn!(%peer, path, attempt, error = %error, "upstream reply is not the expected JSON");
                    }
                },
                Ok(reply) => {
                    status = reply.status;
                    warn!(%peer, path, attempt, status = reply.status.as_u16(), "upstream call failed");
                }
                Err(error) => {
                    warn!(%peer, path, attempt, error = %ErrorChain(&error), "upstream call failed");
                }
            }
        }
        Err(Failed { status })
    }
}

fn api_route(path: &str) -> Option<ApiRoute> {
    let rest = path.strip_prefix("/api/v1/products")?;
    if rest.is_empty() {
        return Some(ApiRoute::Products);
    }
    let mut parts = rest.strip_prefix('/')?.split('/');
    let id = parts.next()?.parse().ok()?;
    let route = match parts.next() {
        None => ApiRoute::Product(id),
        Some("reviews") => ApiRoute::Reviews(id),
        Some("ratings") => ApiRoute::Ratings(id),
        Some(_) => return None,
    };
    parts.next().is_none().then_some(route)
}

/// The propagated headers of `incoming`, with `end-user` set to the signed-in user.
fn outgoing_headers(incoming: &HeaderMap, user: Option<&str>) -> HeaderMap {
    let mut headers = propagated_headers(incoming);
    if let Some(value) = user.and_then(|user| HeaderValue::from_str(user).ok()) {
        headers.insert("end-user", value);
    }
    headers
}

/// The `user` cookie's value, if it is a plausible user name.
fn signed_in_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == USER_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|user| valid_user(user))
        .map(str::to_owned)
}

/// User names end up in a cookie and an `end-user` header: keep them short and plain.
fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 64 && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._@+".contains(&b))
}

async fn login(request: Request<Incoming>) -> Response<Body> {
    let form = match Limited::new(request.into_body(), MAX_FORM).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            warn!(error = %error, "reading the login form failed");
            return server::text(StatusCode::BAD_REQUEST, "unreadable login form\n");
        }
    };
    let username = form_fields(&form).find(|(name, _)| name == "username").map(|(_, v)| v);
    // Like the original, any password is accepted.
    let Some(username) = username.filter(|user| valid_user(user)) else {
        return server::text(
            StatusCode::BAD_REQUEST,
            "username must be 1-64 letters, digits or -._@+\n",
        );
    };
    redirect_with_cookie(&format!("{USER_COOKIE}={username}; Path=/"))
}

fn logout() -> Response<Body> {
    redirect_with_cookie(&format!(
        "{USER_COOKIE}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
    ))
}

fn redirect_with_cookie(cookie: &str) -> Response<Body> {
    let mut response = server::text(StatusCode::FOUND, "");
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/productpage"));
    match HeaderValue::from_str(cookie) {
        Ok(value) => {
            headers.insert(header::SET_COOKIE, value);
        }
        Err(_) => return server::text(StatusCode::BAD_REQUEST, "invalid cookie\n"),
    }
    response
}

/// The `name=value` pairs of an `application/x-www-form-urlencoded` body; undecodable pairs
/// are skipped.
fn form_fields(body: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    body.split(|&b| b == b'&').filter_map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        Some((form_decode(name)?, form_decode(value)?))
    })
}

fn form_decode(encoded: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (*bytes.next()? as char).to_digit(16)?;
                let lo = (*bytes.next()? as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_login_forms() {
        let fields: Vec<_> = form_fields(b"username=jason&passwd=a%2Bb+c&flag").collect();
        assert_eq!(
            fields,
            [
                ("username".to_owned(), "jason".to_owned()),
                ("passwd".to_owned(), "a+b c".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(form_fields(b"username=%zz").count(), 0);
        assert_eq!(
            form_fields(b"username=%e2%98%85").next().map(|(_, v)| v),
            Some("★".into())
        );
    }

    #[test]
    fn reads_the_user_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; user=jason; c=d"));
        assert_eq!(signed_in_user(&headers).as_deref(), Some("jason"));
        headers.insert(header::COOKIE, HeaderValue::from_static("user=<script>"));
        assert_eq!(signed_in_user(&headers), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("user="));
        assert_eq!(signed_in_user(&headers), None);
    }

    #[test]
    fn api_routes() {
        assert!(matches!(api_route("/api/v1/products"), Some(ApiRoute::Products)));
        assert!(matches!(api_route("/api/v1/products/0"), Some(ApiRoute::Product(0))));
        assert!(matches!(
            api_route("/api/v1/products/3/reviews"),
            Some(ApiRoute::Reviews(3))
        ));
        assert!(matches!(
            api_route("/api/v1/products/3/ratings"),
            Some(ApiRoute::Ratings(3))
        ));
        for bad in [
            "/api/v1/productsx",
            "/api/v1/products/x",
            "/api/v1/products/0/y",
            "/api/v1/products/0/ratings/1",
        ] {
            assert!(api_route(bad).is_none(), "{bad}");
        }
    }
}
