//! Weft's router filter: Istio `VirtualService` HTTP routing as a proxy-wasm filter.
//!
//! On each request it picks the virtual host from the authority, takes the first route whose
//! match holds, and then answers locally (`redirect`, `direct_response`, or 404 when no route
//! of a matched host holds) or chooses the upstream: a weighted destination's cluster and
//! subset through Weft's `set_upstream` extension, with the route's timeout, after rewriting
//! the path and authority and applying header operations. Requests for hosts it does not
//! know pass untouched to the proxy's own routing. See `README.md` for the configuration and
//! the semantics, and `schema.json` for the configuration's schema.
//!
//! The decisions are pure functions in [`hosts`], [`matching`], [`rewrite`] and [`weights`];
//! this module only talks to the host.

use std::rc::Rc;

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::proxy_wasm::types::MapType;
use weft_sdk::weft::{self, Upstream};
use weft_sdk::{Action, Context, Filter, HttpContext, LogLevel, Status};

pub mod config;
pub mod hosts;
pub mod matching;
pub mod node;
pub mod pattern;
pub mod rewrite;
pub mod weights;

use config::{Config, HeaderOperations};
use matching::RequestView;

/// Body of the 404 for a request whose host is known but no route matches.
pub const NOT_FOUND_BODY: &[u8] = b"route not found\n";

/// The router for one request.
pub struct Router {
    config: Rc<Config>,
    /// The chosen (virtual host, route, destination), for the response's header operations.
    chosen: Option<(usize, usize, usize)>,
}

impl Filter for Router {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        Self { config, chosen: None }
    }
}

impl Context for Router {}

impl HttpContext for Router {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let pairs: Vec<(String, String)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let request = RequestView::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let config = Rc::clone(&self.config);
        let Some((v, vhost)) = config
            .virtual_host(&request.authority)
            .and_then(|v| Some((v, config.virtual_hosts.get(v)?)))
        else {
            return Action::Continue;
        };
        let workload = node::NodeWorkload::default();
        let Some(matched) = matching::first_match(&vhost.routes, &request, &workload) else {
            return reply(404, vec![("x-weft-reason", "no_route")], Some(NOT_FOUND_BODY));
        };
        let route = matched.route;

        if let Some(direct) = &route.direct_response {
            let body = (!direct.body.is_empty()).then_some(direct.body.as_bytes());
            return reply(direct.status, Vec::new(), body);
        }
        if let Some(redirect) = &route.redirect {
            let location = rewrite::redirect_location(redirect, &request);
            return reply(redirect.redirect_code, vec![("location", location.as_str())], None);
        }

        let weights: Vec<u32> = route.route.iter().map(|d| d.weight).collect();
        let d = weights::pick(&weights, weights::random());
        let Some(dest) = route.route.get(d) else {
            return Action::Continue; // validation guarantees a destination
        };
        if let Some(rw) = &route.rewrite {
            if let Some(path) = rewrite::rewritten_path(rw, matched.block, &request) {
                set_header(MapType::HttpRequestHeaders, ":path", Some(&path));
            }
            if let Some(authority) = &rw.authority {
                set_header(MapType::HttpRequestHeaders, ":authority", Some(authority));
            }
        }
        for headers in [&route.headers, &dest.headers].into_iter().flatten() {
            if let Some(ops) = &headers.request {
                apply(MapType::HttpRequestHeaders, ops);
            }
        }
        let upstream = Upstream {
            cluster: Some(dest.destination.cluster.clone()),
            subset: (!dest.destination.subset.is_empty()).then(|| dest.destination.subset.clone()),
            timeout_ms: route.timeout_ms.filter(|&ms| ms > 0),
            ..Upstream::default()
        };
        if let Err(status) = weft::set_upstream(&upstream) {
            warn("weft.set_upstream (is this a Weft proxy?)", status);
        }
        self.chosen = Some((v, matched.index, d));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some((v, r, d)) = self.chosen else {
            return Action::Continue;
        };
        let Some(route) = self.config.virtual_hosts.get(v).and_then(|vh| vh.routes.get(r)) else {
            return Action::Continue;
        };
        let dest_headers = route.route.get(d).and_then(|dest| dest.headers.as_ref());
        for headers in [route.headers.as_ref(), dest_headers].into_iter().flatten() {
            if let Some(ops) = &headers.response {
                apply(MapType::HttpResponseHeaders, ops);
            }
        }
        Action::Continue
    }
}

// Host calls without the SDK's `unwrap`: a value the host refuses is logged, not a trap.

fn warn(what: &str, status: Status) {
    hostcalls::log(LogLevel::Warn, &format!("router: {what} failed ({status:?})")).ok();
}

/// Answers the request locally and stops the chain.
fn reply(status: u16, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Action {
    match hostcalls::send_http_response(u32::from(status), headers, body) {
        Ok(()) => Action::Pause,
        Err(error) => {
            warn("send_http_response", error);
            Action::Continue
        }
    }
}

/// Replaces (`Some`) or removes (`None`) a header.
fn set_header(map: MapType, name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(map, name, value) {
        warn(&format!("setting header {name}"), status);
    }
}

/// Applies `set` (replace), then `add` (append), then `remove`.
fn apply(map: MapType, ops: &HeaderOperations) {
    for (name, value) in &ops.set {
        set_header(map, name, Some(value));
    }
    for (name, value) in &ops.add {
        if let Err(status) = hostcalls::add_map_value(map, name, value) {
            warn(&format!("adding header {name}"), status);
        }
    }
    for name in &ops.remove {
        set_header(map, name, None);
    }
}

weft_sdk::filter!(Router, capabilities: [request_headers, response_headers, properties]);
