//! The proxy-wasm glue: one [`JwtFilter`] per request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::{Action, Context, Filter, HttpContext, LogLevel, MetricType};

use crate::config::{Candidate, Config};
use crate::extract::{Found, Location, extract, realm, remove_param};
use crate::jwks::{Jwks, cache_entry, split_cache_entry};
use crate::token::{Error, claim_header_value};

/// Largest key set body accepted from a callout (shared data is bounded process-wide).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A fetched key set, parsed, as this VM last saw it in shared data.
struct ParsedKeys {
    cas: u32,
    expires_ms: u64,
    jwks: Rc<Jwks>,
}

/// At most this many verified signatures are remembered per VM (then forgotten at once).
const MAX_VERIFIED: usize = 1024;

thread_local! {
    /// Parsed key sets by shared-data key, so a key set is parsed once per VM and version.
    static KEYS: RefCell<HashMap<String, ParsedKeys>> = RefCell::new(HashMap::new());
    /// Tokens whose signature verified (by SHA-256 of the token), with the rule and key set
    /// version: a token seen again skips the signature check (about 1 ms in Wasm), not the
    /// time and audience checks, which [`Config::check`] repeats on every request.
    static VERIFIED: RefCell<HashMap<[u8; 32], (usize, u32)>> = RefCell::new(HashMap::new());
    /// Metric ids (defined on first use).
    static METRICS: Cell<Option<[u32; 4]>> = const { Cell::new(None) };
}

/// Counters: verified requests, rejected requests, key set fetches, failed fetches.
#[derive(Clone, Copy)]
enum Metric {
    Allowed = 0,
    Denied = 1,
    Fetches = 2,
    FetchFailures = 3,
}

fn count(metric: Metric) {
    let ids = METRICS.with(|cell| {
        if let Some(ids) = cell.get() {
            return ids;
        }
        let names = [
            "jwt_allowed_total",
            "jwt_denied_total",
            "jwt_jwks_fetches_total",
            "jwt_jwks_fetch_failures_total",
        ];
        let ids = names.map(|name| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0));
        cell.set(Some(ids));
        ids
    });
    let _ = hostcalls::increment_metric(ids[metric as usize], 1);
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Verifies `candidate`'s signature (found as `token`) with `jwks`, version `version` of its
/// rule's key set, remembering successes.
fn verify(token: &str, candidate: &Candidate, jwks: &Jwks, version: u32) -> Result<(), Error> {
    use sha2::Digest as _;
    let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    let seen = VERIFIED.with(|verified| verified.borrow().get(&digest) == Some(&(candidate.rule, version)));
    if seen {
        return Ok(());
    }
    candidate.jwt.verify_signature(jwks)?;
    VERIFIED.with(|verified| {
        let mut verified = verified.borrow_mut();
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(digest, (candidate.rule, version));
    });
    Ok(())
}

/// What is known of a rule's key set for this request.
enum Keys<'a> {
    Inline(&'a Jwks),
    /// A fetched key set and its shared-data version (CAS token).
    Cached(Rc<Jwks>, u32),
    /// Not cached (or expired) and not fetched yet in this request.
    Fetch,
    /// The fetch failed in this request and nothing usable is cached.
    Failed(Error),
}

/// The jwt filter of one request.
pub struct JwtFilter {
    config: Rc<Config>,
    /// Tokens found in the request.
    found: Vec<Found>,
    /// Index in `found` of the token being checked.
    next: usize,
    /// The token being checked, while its key set is fetched.
    pending: Option<Candidate>,
    /// Tokens that passed.
    verified: Vec<(usize, Candidate)>,
    /// Token of the key set callout in flight, and the rule it is for.
    waiting: Option<(u32, usize)>,
    /// Rules whose key set was fetched during this request, with the error if it failed. A
    /// request fetches a rule's key set at most once, and uses what it got even if it has
    /// expired meanwhile (`jwks_cache_ms` may be shorter than the checks take).
    fetched: Vec<(usize, Option<Error>)>,
    /// `www-authenticate` realm: the request's URI without the query.
    realm: String,
}

impl Filter for JwtFilter {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        JwtFilter {
            config,
            found: Vec::new(),
            next: 0,
            pending: None,
            verified: Vec::new(),
            waiting: None,
            fetched: Vec::new(),
            realm: String::new(),
        }
    }
}

impl JwtFilter {
    fn now_ms(&self) -> u64 {
        let since = self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// The key set for `rule` (an index of `config.rules`).
    fn keys(&self, rule: usize) -> Keys<'_> {
        let Some(rule_config) = self.config.rules.get(rule) else {
            return Keys::Failed(Error::JwksFetchFail);
        };
        if let Some(jwks) = &rule_config.jwks {
            return Keys::Inline(jwks);
        }
        let Some(key) = rule_config.jwks_cache_key() else {
            return Keys::Failed(Error::JwksFetchFail);
        };
        let cached = self.cached_keys(&key);
        let fetched = self.fetched.iter().find(|(r, _)| *r == rule).map(|(_, e)| *e);
        match (cached, fetched) {
            (Some((jwks, true, version)), _) => Keys::Cached(jwks, version),
            // Fetched by this request (or a failed refresh: the expired key set is kept).
            (Some((jwks, false, version)), Some(_)) => Keys::Cached(jwks, version),
            (None, Some(error)) => Keys::Failed(error.unwrap_or(Error::JwksFetchFail)),
            (_, None) => Keys::Fetch,
        }
    }

    /// The key set stored under `key` in shared data, whether it is still fresh, and its
    /// version.
    fn cached_keys(&self, key: &str) -> Option<(Rc<Jwks>, bool, u32)> {
        let (Some(bytes), Some(cas)) = self.get_shared_data(key) else {
            return None;
        };
        let now = self.now_ms();
        let known = KEYS.with(|keys| {
            keys.borrow()
                .get(key)
                .filter(|k| k.cas == cas)
                .map(|k| (k.jwks.clone(), k.expires_ms))
        });
        let (jwks, expires_ms) = match known {
            Some(known) => known,
            None => {
                let (expires, body) = split_cache_entry(&bytes)?;
                let jwks = Rc::new(Jwks::parse(body).ok()?);
                KEYS.with(|keys| {
                    keys.borrow_mut().insert(
                        key.to_owned(),
                        ParsedKeys {
                            cas,
                            expires_ms: expires,
                            jwks: jwks.clone(),
                        },
                    )
                });
                (jwks, expires)
            }
        };
        Some((jwks, now < expires_ms, cas))
    }

    /// Starts fetching `rule`'s key set; `false` if the callout could not be made.
    fn fetch(&mut self, rule: usize) -> bool {
        let Some(rule_config) = self.config.rules.get(rule) else {
            return false;
        };
        let Some(cluster) = rule_config.jwks_cluster.as_deref() else {
            return false;
        };
        let authority = rule_config.jwks_authority.as_deref().unwrap_or(cluster);
        let headers = vec![
            (":method", "GET"),
            (":path", rule_config.jwks_path.as_str()),
            (":authority", authority),
            ("accept", "application/json"),
        ];
        let timeout = Duration::from_millis(rule_config.jwks_timeout_ms);
        count(Metric::Fetches);
        match self.dispatch_http_call(cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.waiting = Some((token, rule));
                true
            }
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("jwt: cannot fetch JWKS from cluster {cluster}: {status:?}"),
                );
                false
            }
        }
    }

    /// Checks the remaining tokens. `Ok(true)`: all passed; `Ok(false)`: waiting for a key set.
    fn run(&mut self) -> Result<bool, Error> {
        let now_secs = self.now_ms() / 1000;
        while self.next < self.found.len() {
            let candidate = match self.pending.take() {
                Some(candidate) => candidate,
                None => self.config.check(&self.found[self.next], now_secs)?,
            };
            let result = match self.keys(candidate.rule) {
                Keys::Inline(jwks) => verify(&self.found[self.next].token, &candidate, jwks, 0),
                Keys::Cached(jwks, version) => verify(&self.found[self.next].token, &candidate, &jwks, version),
                Keys::Failed(error) => Err(error),
                Keys::Fetch => {
                    let rule = candidate.rule;
                    if self.fetch(rule) {
                        self.pending = Some(candidate);
                        return Ok(false);
                    }
                    count(Metric::FetchFailures);
                    self.fetched.push((rule, Some(Error::JwksFetchFail)));
                    self.pending = Some(candidate);
                    continue;
                }
            };
            result?;
            self.verified.push((self.next, candidate));
            self.next += 1;
        }
        Ok(true)
    }

    /// Applies the outcome of [`JwtFilter::run`]; returns whether the request may go on now.
    fn finish(&mut self, outcome: Result<bool, Error>) -> bool {
        match outcome {
            Ok(true) => {
                self.apply();
                count(Metric::Allowed);
                true
            }
            Ok(false) => false,
            Err(error) => {
                count(Metric::Denied);
                log(LogLevel::Debug, &format!("jwt: rejected: {}", error.message()));
                let challenge = format!("Bearer realm=\"{}\", error=\"invalid_token\"", self.realm);
                self.send_http_response(
                    error.http_status(),
                    vec![("www-authenticate", challenge.as_str())],
                    Some(error.message().as_bytes()),
                );
                false
            }
        }
    }

    /// Outputs of the verified tokens: headers, token removal, properties for authz.
    fn apply(&mut self) {
        let locations = self.config.locations();
        for (found_index, candidate) in &self.verified {
            let Some(rule) = self.config.rules.get(candidate.rule) else {
                continue;
            };
            if let Some(header) = &rule.output_payload_to_header {
                self.add_http_request_header(header, &candidate.jwt.payload_b64);
            }
            for output in &rule.output_claim_to_headers {
                if let Some(value) = candidate.jwt.claim(&output.claim).and_then(claim_header_value) {
                    self.add_http_request_header(&output.header, &value);
                }
            }
            if rule.forward_original_token {
                continue;
            }
            let location = self
                .found
                .get(*found_index)
                .and_then(|found| locations.get(found.location));
            match location {
                Some((Location::Header { name, .. }, _)) => self.remove_http_request_header(name),
                Some((Location::Param(param), _)) => {
                    if let Some(path) = self.request_header(":path") {
                        self.set_http_request_header(":path", Some(&remove_param(&path, param)));
                    }
                }
                None => {}
            }
        }
        if let Some((_, first)) = self.verified.first() {
            let principal = format!("{}/{}", first.jwt.iss, first.jwt.sub);
            self.set_property(vec!["weft", "jwt", "claims"], Some(first.jwt.payload_json.as_bytes()));
            self.set_property(vec!["request", "auth", "principal"], Some(principal.as_bytes()));
        }
    }

    /// A request header as text (lossy: never traps on non-UTF-8 values).
    fn request_header(&self, name: &str) -> Option<String> {
        self.get_http_request_header_bytes(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn is_cors_preflight(&self) -> bool {
        let present = |name: &str| self.request_header(name).is_some_and(|v| !v.is_empty());
        self.request_header(":method").as_deref() == Some("OPTIONS")
            && present("origin")
            && present("access-control-request-method")
    }
}

impl Context for JwtFilter {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some((waiting, rule)) = self.waiting else {
            return;
        };
        if waiting != token_id {
            return;
        }
        self.waiting = None;
        let status = self
            .get_http_call_response_header_bytes(":status")
            .map(|s| String::from_utf8_lossy(&s).into_owned());
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let rule_config = self.config.rules.get(rule);
        let stored: Result<(), Error> = match (status.as_deref(), rule_config) {
            (Some("200"), Some(rule_config)) if body.len() <= MAX_JWKS_BYTES => match Jwks::parse(&body) {
                Ok(_) => {
                    let expires = self.now_ms().saturating_add(rule_config.jwks_cache_ms);
                    let value = cache_entry(expires, &body);
                    let key = rule_config.jwks_cache_key().unwrap_or_default();
                    self.set_shared_data(&key, Some(&value), None)
                        .map_err(|_| Error::JwksFetchFail)
                }
                Err(message) => {
                    log(
                        LogLevel::Warn,
                        &format!("jwt: fetched JWKS for rule {rule} is unusable: {message}"),
                    );
                    Err(Error::JwksNoValidKeys)
                }
            },
            (status, _) => {
                let size = body.len();
                log(
                    LogLevel::Warn,
                    &format!("jwt: JWKS fetch for rule {rule} failed (status {status:?}, {size} bytes)"),
                );
                Err(Error::JwksFetchFail)
            }
        };
        if stored.is_err() {
            count(Metric::FetchFailures);
        }
        self.fetched.push((rule, stored.err()));
        let outcome = self.run();
        if self.finish(outcome) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for JwtFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Clients cannot forge what this filter outputs.
        for header in self.config.output_headers() {
            self.remove_http_request_header(&header);
        }
        if self.config.rules.is_empty() || self.is_cors_preflight() {
            return Action::Continue;
        }
        let headers: Vec<(String, String)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let pseudo = |name: &str| headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
        let path = pseudo(":path");
        self.found = extract(&self.config.location_list(), &headers, path);
        if self.found.is_empty() {
            // No token: nothing to verify; authorization decides.
            return Action::Continue;
        }
        let scheme = match pseudo(":scheme") {
            "" => "http",
            scheme => scheme,
        };
        self.realm = realm(scheme, pseudo(":authority"), path);
        let outcome = self.run();
        if self.finish(outcome) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

weft_sdk::filter!(JwtFilter, capabilities: [request_headers, callouts, properties]);
