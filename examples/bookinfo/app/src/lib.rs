//! Istio's Bookinfo sample application, rewritten as one small Rust binary (`bookinfo`) so the
//! Weft demo and end-to-end tests have a realistic four-service app to put sidecars in front of.
//!
//! It reproduces the *visible* behaviour of the original (Python productpage, Ruby details, Java
//! reviews, Node ratings): the same paths, JSON shapes, page texts, timeouts, retries and header
//! propagation, so Istio's traffic-management lessons (routing by version, routing by `end-user`,
//! fault injection) play out the same way. It is not a web framework and not a load generator;
//! every service is a handful of hard-coded routes.
//!
//! Start reading at [`productpage`] (the caller of everything), then [`reviews`]; [`client`] is
//! the one place that makes outgoing calls.
//!
//! # Services
//!
//! Each runs as `bookinfo <service> [flags]`; all listen on `--listen ADDR` (default
//! `127.0.0.1:9080`), answer `GET /health`, and log one line per request to stderr
//! (`RUST_LOG` filters, default `info`). The first log line is `listening on ADDR`, with the
//! actual port when `--listen` used port 0. Ctrl-C or SIGTERM ends it (exit status 0).
//!
//! - [`details`]: `GET /details/{id}` → the book's details as JSON (`id`, `author`, `year`,
//!   `type`, `pages`, `publisher`, `language`, `ISBN-10`, `ISBN-13`). A non-numeric id is a 400.
//! - [`ratings`]: `GET /ratings/{id}` → `{"id":id,"ratings":{"Reviewer1":5,"Reviewer2":4}}`.
//! - [`reviews`] (`--version v1|v2|v3`, `--ratings URL` default `http://ratings:9080`):
//!   `GET /reviews/{id}` → `{"id","podname","clustername","version","reviews":[…]}` with two
//!   reviews. v1 has no ratings and never calls ratings; v2 and v3 call `ratings` (timeout
//!   10 s, no retry) and attach `{"stars":n,"color":"black"}` (v2) or `"red"` (v3) to each
//!   review, or `{"error":"Ratings service is currently unavailable"}` when the call fails.
//!   `--podname` (default `$HOSTNAME`, else `reviews-<version>`) and `--clustername` (default
//!   `$CLUSTER_NAME`, else `null`) fill the fields of the same names.
//! - [`productpage`] (`--details URL` default `http://details:9080`, `--reviews URL` default
//!   `http://reviews:9080`, `--ratings URL` default `http://ratings:9080`, the last used only by
//!   the ratings API): `GET /productpage` renders "The Comedy of Errors" with its details and
//!   reviews. Details and reviews are called with a 3 s timeout and two tries each, so a
//!   reviews service that takes longer than 3 s costs about 6 s and then shows
//!   "Error fetching product reviews!". Stars are `★` (filled) and `☆` (unfilled, up to 5)
//!   inside `<font color="black">` or `<font color="red">`; an HTML comment
//!   `<!-- reviews: version=v2 podname=… clustername=… -->` names the reviews instance that
//!   served the page. Also `GET /` (index), `GET /api/v1/products`,
//!   `GET /api/v1/products/{id}`, `…/{id}/reviews`, `…/{id}/ratings`, `POST /login`
//!   (form `username=…&passwd=…`: sets cookie `user`, 302 to `/productpage`) and
//!   `GET /logout` (clears it).
//!
//! # Outgoing calls
//!
//! With `--proxy HOST:PORT` every call goes to that HTTP proxy (a Weft sidecar's outbound
//! listener) with an absolute-form request line (`GET http://reviews:9080/reviews/0 HTTP/1.1`,
//! `Host: reviews:9080`); without it the service connects to the URL's host and port. Calls
//! carry `x-request-id`, `traceparent`, `tracestate`, `x-b3-*`, `b3` and `end-user` copied from
//! the incoming request; productpage sets `end-user` to the signed-in user, which is what
//! Istio's header-matching routes (`end-user: jason`) look at.

pub mod client;
pub mod details;
pub mod productpage;
pub mod ratings;
pub mod reviews;
mod server;

pub use server::HEALTH_PATH;
