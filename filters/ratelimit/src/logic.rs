//! The filter's pure logic, free of hostcalls: token-bucket arithmetic, the bucket's encoding in
//! shared data, key extraction and the header values.

use std::net::{IpAddr, SocketAddr};

use crate::config::{Config, Key, MAX_KEY_BYTES};

/// Fixed-point scale: a bucket holds micro-tokens.
pub const SCALE: u64 = 1_000_000;

/// Prefix of every shared-data key the filter uses.
pub const KEY_PREFIX: &str = "ratelimit:";

/// The bucket shared by keys too long for their own bucket and by new keys once
/// `max_buckets` buckets exist. (`#` never starts a key kind, so it cannot collide.)
pub const OVERFLOW_KEY: &str = "ratelimit:#overflow";

/// The bucket registry ([`Registry`]): how many buckets exist, and the lock held while one is
/// created.
pub const REGISTRY_KEY: &str = "ratelimit:#registry";

/// How long a creation lock holds before others may take it over (its holder is presumed
/// dead: a creation takes two hostcalls).
pub const LOCK_TTL_NS: u64 = 50_000_000;

/// Body of the 429 reply.
pub const LIMITED_BODY: &str = "rate limited\n";

/// First byte of an encoded bucket: the encoding's version.
pub const ENCODING_VERSION: u8 = 1;

/// Length of an encoded bucket.
pub const ENCODED_LEN: usize = 17;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The bucket parameters of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Capacity, in tokens.
    pub max_tokens: u64,
    /// Tokens added per fill interval.
    pub tokens_per_fill: u64,
    /// The fill interval, in nanoseconds (at least 1).
    pub fill_interval_ns: u64,
}

impl Limits {
    /// The limits of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_tokens: config.max_tokens,
            tokens_per_fill: config.tokens_per_fill,
            fill_interval_ns: config.fill_interval_ms.saturating_mul(1_000_000).max(1),
        }
    }

    /// Capacity in micro-tokens.
    pub fn capacity(&self) -> u64 {
        self.max_tokens.saturating_mul(SCALE)
    }

    /// Micro-tokens earned in `elapsed_ns` (rounded down, at most the capacity).
    pub fn earned(&self, elapsed_ns: u64) -> u64 {
        let per_interval = u128::from(self.tokens_per_fill) * u128::from(SCALE);
        let earned = u128::from(elapsed_ns) * per_interval / u128::from(self.fill_interval_ns.max(1));
        u64::try_from(earned).unwrap_or(u64::MAX).min(self.capacity())
    }

    /// Nanoseconds until `micro_tokens` more have been earned (rounded up).
    pub fn nanos_to_earn(&self, micro_tokens: u64) -> u64 {
        let per_interval = (u128::from(self.tokens_per_fill) * u128::from(SCALE)).max(1);
        let nanos = (u128::from(micro_tokens) * u128::from(self.fill_interval_ns)).div_ceil(per_interval);
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// One key's token bucket, as kept in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens available, in micro-tokens (fixed point, [`SCALE`] per token).
    pub tokens: u64,
    /// When the tokens were last refilled: wall clock, nanoseconds since the Unix epoch.
    pub refilled_ns: u64,
}

impl Bucket {
    /// A full bucket at `now_ns`.
    pub fn full(limits: &Limits, now_ns: u64) -> Self {
        Self {
            tokens: limits.capacity(),
            refilled_ns: now_ns,
        }
    }

    /// The shared-data value: the version byte, then tokens and refill time as little-endian
    /// `u64`s.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0; ENCODED_LEN];
        out[0] = ENCODING_VERSION;
        out[1..9].copy_from_slice(&self.tokens.to_le_bytes());
        out[9..17].copy_from_slice(&self.refilled_ns.to_le_bytes());
        out
    }

    /// Reads [`Bucket::encode`]'s output; anything else (another version, a foreign value)
    /// gives `None`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != ENCODING_VERSION || rest.len() != 16 {
            return None;
        }
        let (tokens, refilled) = rest.split_at(8);
        Some(Self {
            tokens: u64::from_le_bytes(tokens.try_into().ok()?),
            refilled_ns: u64::from_le_bytes(refilled.try_into().ok()?),
        })
    }

    /// The bucket refilled up to `now_ns`. The refill time advances only by the time the
    /// earned micro-tokens took, so fractions are not lost between updates; a full bucket
    /// restarts at `now_ns`. Tokens above the capacity (after the capacity was lowered) are
    /// dropped. If the wall clock went back, nothing is earned and the refill time restarts
    /// from `now_ns`.
    pub fn refilled(self, limits: &Limits, now_ns: u64) -> Self {
        let capacity = limits.capacity();
        let tokens = self.tokens.min(capacity);
        let Some(elapsed) = now_ns.checked_sub(self.refilled_ns) else {
            return Self {
                tokens,
                refilled_ns: now_ns,
            };
        };
        let earned = limits.earned(elapsed);
        match tokens.checked_add(earned).filter(|&t| t < capacity) {
            Some(tokens) => Self {
                tokens,
                refilled_ns: self.refilled_ns + limits.nanos_to_earn(earned).min(elapsed),
            },
            None => Self::full(limits, now_ns),
        }
    }
}

/// What a request gets from its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A token was taken: write `bucket` back.
    Allowed {
        /// The bucket after the refill and the take.
        bucket: Bucket,
        /// Whole tokens left.
        remaining: u64,
    },
    /// The bucket is empty: nothing to write.
    Limited {
        /// Seconds until a token is available (rounded up, at least 1).
        retry_after_secs: u64,
        /// Seconds until the bucket is full again (rounded up, at least 1).
        reset_secs: u64,
    },
}

/// Takes one token from `stored` (a new bucket if `None`), refilled up to `now_ns`.
pub fn take(stored: Option<Bucket>, limits: &Limits, now_ns: u64) -> Decision {
    let bucket = match stored {
        Some(bucket) => bucket.refilled(limits, now_ns),
        None => Bucket::full(limits, now_ns),
    };
    match bucket.tokens.checked_sub(SCALE) {
        Some(tokens) => Decision::Allowed {
            bucket: Bucket { tokens, ..bucket },
            remaining: tokens / SCALE,
        },
        None => Decision::Limited {
            retry_after_secs: ceil_secs(limits.nanos_to_earn(SCALE - bucket.tokens)),
            reset_secs: ceil_secs(limits.nanos_to_earn(limits.capacity() - bucket.tokens)),
        },
    }
}

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC).max(1)
}

/// Headers of the 429 reply.
pub fn limited_headers(limits: &Limits, retry_after_secs: u64, reset_secs: u64) -> [(&'static str, String); 4] {
    [
        ("retry-after", retry_after_secs.to_string()),
        ("x-ratelimit-limit", limits.max_tokens.to_string()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", reset_secs.to_string()),
    ]
}

/// Headers set on an allowed response when `response_headers` is on.
pub fn allowed_headers(limits: &Limits, remaining: u64) -> [(&'static str, String); 2] {
    [
        ("x-ratelimit-limit", limits.max_tokens.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
    ]
}

/// Which bucket a request uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketKey {
    /// The request has no key (header absent or empty, no peer principal, unreadable source
    /// address): it is not limited.
    Unlimited,
    /// The shared-data key of the request's own bucket.
    Own(String),
    /// The key value is longer than [`MAX_KEY_BYTES`]: the overflow bucket.
    Overflow,
}

/// The bucket for a request whose key input is `input`: the header value for
/// [`Key::Header`], the `:path` value for [`Key::Path`], the `source.address` property
/// (`ip:port`) for [`Key::SourceIp`], the principal for [`Key::PeerPrincipal`]; ignored for
/// [`Key::Constant`].
///
/// Shared-data keys are `ratelimit:` + kind + `:` + value: `ratelimit:header:x-user:alice`,
/// `ratelimit:path:/api`, `ratelimit:source_ip:10.0.0.1`, `ratelimit:peer_principal:spiffe://…`,
/// `ratelimit:constant:all`. Bytes that are not UTF-8 are kept losslessly as `\u{1}` + hex
/// (a control character no header value can carry).
pub fn bucket_key(key: &Key, input: Option<&[u8]>) -> BucketKey {
    let (kind, value) = match key {
        Key::Constant(value) => ("constant".to_owned(), value.clone()),
        Key::Header(name) => match input.filter(|v| !v.is_empty()) {
            Some(bytes) => (format!("header:{name}"), text(bytes)),
            None => return BucketKey::Unlimited,
        },
        Key::Path => match input.map(path_without_query).filter(|p| !p.is_empty()) {
            Some(path) => ("path".to_owned(), text(path)),
            None => return BucketKey::Unlimited,
        },
        Key::SourceIp => match input.and_then(source_ip) {
            Some(ip) => ("source_ip".to_owned(), ip.to_string()),
            None => return BucketKey::Unlimited,
        },
        Key::PeerPrincipal => match input.filter(|v| !v.is_empty()) {
            Some(bytes) => ("peer_principal".to_owned(), text(bytes)),
            None => return BucketKey::Unlimited,
        },
    };
    if value.len() > MAX_KEY_BYTES {
        BucketKey::Overflow
    } else {
        BucketKey::Own(format!("{KEY_PREFIX}{kind}:{value}"))
    }
}

fn path_without_query(path: &[u8]) -> &[u8] {
    match path.iter().position(|&b| b == b'?') {
        Some(end) => &path[..end],
        None => path,
    }
}

/// The IP of an `ip:port` (or bare IP) address; IPv4-mapped IPv6 addresses as IPv4.
fn source_ip(address: &[u8]) -> Option<IpAddr> {
    let address = std::str::from_utf8(address).ok()?;
    let ip = match address.parse::<SocketAddr>() {
        Ok(socket) => socket.ip(),
        Err(_) => address.parse::<IpAddr>().ok()?,
    };
    Some(ip.to_canonical())
}

fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let mut out = String::from("\u{1}");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// The bucket registry kept under [`REGISTRY_KEY`]. Shared data cannot create a key only if it
/// is missing (a write with CAS token 0 always succeeds), so two workers creating the same
/// bucket at once could overwrite each other's first take; buckets are therefore created under
/// this lock (taken and released with compare-and-swap), which also counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registry {
    /// Buckets created (the overflow bucket not included).
    pub buckets: u64,
    /// While a bucket is being created: when the lock expires (wall clock, ns); 0 unlocked.
    pub locked_until_ns: u64,
}

impl Registry {
    /// The shared-data value: two little-endian `u64`s.
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.buckets.to_le_bytes());
        out[8..].copy_from_slice(&self.locked_until_ns.to_le_bytes());
        out
    }

    /// Reads [`Registry::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 {
            return None;
        }
        let (buckets, locked) = bytes.split_at(8);
        Some(Self {
            buckets: u64::from_le_bytes(buckets.try_into().ok()?),
            locked_until_ns: u64::from_le_bytes(locked.try_into().ok()?),
        })
    }

    /// Whether another creation holds the lock at `now_ns`. An expiry further ahead than
    /// [`LOCK_TTL_NS`] (the wall clock went back) counts as expired.
    pub fn is_locked(&self, now_ns: u64) -> bool {
        self.locked_until_ns > now_ns && self.locked_until_ns - now_ns <= LOCK_TTL_NS
    }

    /// The registry locked at `now_ns`.
    pub fn locked(self, now_ns: u64) -> Self {
        Self {
            locked_until_ns: now_ns.saturating_add(LOCK_TTL_NS),
            ..self
        }
    }

    /// The registry unlocked, with `created` more buckets.
    pub fn unlocked(self, created: u64) -> Self {
        Self {
            buckets: self.buckets.saturating_add(created),
            locked_until_ns: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn limits(max_tokens: u64, tokens_per_fill: u64, fill_interval_ms: u64) -> Limits {
        Limits {
            max_tokens,
            tokens_per_fill,
            fill_interval_ns: fill_interval_ms * MS,
        }
    }

    /// Takes tokens until refused, at `now`: (allowed count, final bucket, the refusal).
    fn drain(mut bucket: Option<Bucket>, limits: &Limits, now: u64) -> (u64, Option<Bucket>, Decision) {
        let mut allowed = 0;
        loop {
            match take(bucket, limits, now) {
                Decision::Allowed { bucket: b, .. } => {
                    allowed += 1;
                    bucket = Some(b);
                }
                limited => return (allowed, bucket, limited),
            }
        }
    }

    #[test]
    fn a_new_bucket_allows_a_burst_of_max_tokens() {
        let l = limits(10, 1, 60_000);
        let first = take(None, &l, T0);
        assert_eq!(
            first,
            Decision::Allowed {
                bucket: Bucket {
                    tokens: 9 * SCALE,
                    refilled_ns: T0
                },
                remaining: 9
            }
        );
        let (allowed, _, limited) = drain(None, &l, T0);
        assert_eq!(allowed, 10);
        assert_eq!(
            limited,
            Decision::Limited {
                retry_after_secs: 60,
                reset_secs: 600
            }
        );
    }

    #[test]
    fn remaining_counts_down_to_zero() {
        let l = limits(3, 1, 1000);
        let mut bucket = None;
        let mut seen = Vec::new();
        for _ in 0..3 {
            match take(bucket, &l, T0) {
                Decision::Allowed { bucket: b, remaining } => {
                    seen.push(remaining);
                    bucket = Some(b);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, [2, 1, 0]);
    }

    #[test]
    fn tokens_refill_lazily_and_evenly() {
        let l = limits(2, 2, 200);
        let (_, bucket, _) = drain(None, &l, T0);
        // 50 ms earn half a token: still limited, one token in 50 ms (1 s rounded up).
        assert_eq!(
            take(bucket, &l, T0 + 50 * MS),
            Decision::Limited {
                retry_after_secs: 1,
                reset_secs: 1
            }
        );
        // 100 ms earn one token.
        let (allowed, _, _) = drain(bucket, &l, T0 + 100 * MS);
        assert_eq!(allowed, 1);
        // A full interval earns tokens_per_fill; much longer is capped at max_tokens.
        assert_eq!(drain(bucket, &l, T0 + 200 * MS).0, 2);
        assert_eq!(drain(bucket, &l, T0 + 3600 * SEC).0, 2);
    }

    #[test]
    fn fractions_of_tokens_add_up() {
        let l = limits(1, 1, 3);
        let mut bucket = Bucket {
            tokens: 0,
            refilled_ns: T0,
        };
        for step in 1..=3 {
            bucket = bucket.refilled(&l, T0 + step * MS);
        }
        assert_eq!(bucket.tokens, SCALE, "three thirds make a token: no rounding loss");
    }

    #[test]
    fn retry_after_and_reset_round_up() {
        let l = limits(5, 1, 1500);
        let empty = Some(Bucket {
            tokens: 0,
            refilled_ns: T0,
        });
        assert_eq!(
            take(empty, &l, T0),
            Decision::Limited {
                retry_after_secs: 2,
                reset_secs: 8
            }
        );
        let fast = limits(100, 100, 1);
        let almost = Some(Bucket {
            tokens: SCALE - 1,
            refilled_ns: T0,
        });
        assert_eq!(
            take(almost, &fast, T0),
            Decision::Limited {
                retry_after_secs: 1,
                reset_secs: 1
            },
            "never 0"
        );
    }

    #[test]
    fn a_clock_going_back_earns_nothing_and_restarts() {
        let l = limits(10, 10, 1000);
        let bucket = Bucket {
            tokens: SCALE / 2,
            refilled_ns: T0,
        };
        assert_eq!(
            bucket.refilled(&l, T0 - SEC),
            Bucket {
                tokens: SCALE / 2,
                refilled_ns: T0 - SEC
            }
        );
    }

    #[test]
    fn a_lowered_capacity_drops_the_extra_tokens() {
        let bucket = Bucket {
            tokens: 100 * SCALE,
            refilled_ns: T0,
        };
        let (allowed, _, _) = drain(Some(bucket), &limits(3, 1, 1000), T0);
        assert_eq!(allowed, 3);
    }

    #[test]
    fn extreme_limits_do_not_overflow() {
        let l = Limits {
            max_tokens: 1_000_000_000,
            tokens_per_fill: 1_000_000_000,
            fill_interval_ns: 1,
        };
        let bucket = Bucket {
            tokens: 0,
            refilled_ns: 0,
        };
        assert_eq!(bucket.refilled(&l, u64::MAX).tokens, l.capacity());
        let slow = Limits {
            max_tokens: 1_000_000_000,
            tokens_per_fill: 1,
            fill_interval_ns: u64::MAX,
        };
        // Both waits saturate at u64::MAX nanoseconds.
        assert_eq!(
            take(Some(bucket), &slow, 0),
            Decision::Limited {
                retry_after_secs: 18_446_744_074,
                reset_secs: 18_446_744_074
            }
        );
    }

    #[test]
    fn buckets_round_trip_through_their_encoding() {
        let bucket = Bucket {
            tokens: 1_234_567,
            refilled_ns: T0 + 42,
        };
        let bytes = bucket.encode();
        assert_eq!(bytes[0], ENCODING_VERSION);
        assert_eq!(Bucket::decode(&bytes), Some(bucket));
        assert_eq!(Bucket::decode(&bytes[..16]), None);
        assert_eq!(Bucket::decode(b""), None);
        let mut other_version = bytes;
        other_version[0] = 2;
        assert_eq!(Bucket::decode(&other_version), None);
    }

    #[test]
    fn the_registry_locks_expire_and_count() {
        let registry = Registry {
            buckets: 7,
            locked_until_ns: 0,
        };
        assert_eq!(Registry::decode(&registry.encode()), Some(registry));
        assert_eq!(Registry::decode(b"7"), None);
        assert!(!registry.is_locked(T0));
        let locked = registry.locked(T0);
        assert!(locked.is_locked(T0));
        assert!(locked.is_locked(T0 + LOCK_TTL_NS - 1));
        assert!(
            !locked.is_locked(T0 + LOCK_TTL_NS),
            "expired: the holder is presumed dead"
        );
        assert!(!locked.is_locked(T0 - SEC), "the clock went back: not held forever");
        assert_eq!(
            locked.unlocked(1),
            Registry {
                buckets: 8,
                locked_until_ns: 0
            }
        );
    }

    #[test]
    fn keys_come_from_the_configured_input() {
        let own = |s: &str| BucketKey::Own(s.to_owned());
        let header = Key::Header("x-user".into());
        assert_eq!(
            bucket_key(&header, Some(b"alice")),
            own("ratelimit:header:x-user:alice")
        );
        assert_eq!(bucket_key(&header, None), BucketKey::Unlimited);
        assert_eq!(bucket_key(&header, Some(b"")), BucketKey::Unlimited);
        assert_eq!(
            bucket_key(&header, Some(b"\xffa")),
            own("ratelimit:header:x-user:\u{1}ff61"),
            "non-UTF-8 kept losslessly"
        );
        assert_eq!(
            bucket_key(&Key::Path, Some(b"/api/x?page=2")),
            own("ratelimit:path:/api/x")
        );
        assert_eq!(bucket_key(&Key::Path, Some(b"/api/x")), own("ratelimit:path:/api/x"));
        assert_eq!(bucket_key(&Key::Path, None), BucketKey::Unlimited);
        assert_eq!(
            bucket_key(&Key::SourceIp, Some(b"10.1.2.3:5555")),
            own("ratelimit:source_ip:10.1.2.3")
        );
        assert_eq!(
            bucket_key(&Key::SourceIp, Some(b"[::1]:80")),
            own("ratelimit:source_ip:::1")
        );
        assert_eq!(
            bucket_key(&Key::SourceIp, Some(b"[::ffff:10.0.0.1]:80")),
            own("ratelimit:source_ip:10.0.0.1")
        );
        assert_eq!(
            bucket_key(&Key::SourceIp, Some(b"10.0.0.9")),
            own("ratelimit:source_ip:10.0.0.9")
        );
        assert_eq!(bucket_key(&Key::SourceIp, Some(b"nonsense")), BucketKey::Unlimited);
        assert_eq!(bucket_key(&Key::SourceIp, None), BucketKey::Unlimited);
        assert_eq!(
            bucket_key(&Key::PeerPrincipal, Some(b"spiffe://td/ns/a/sa/b")),
            own("ratelimit:peer_principal:spiffe://td/ns/a/sa/b")
        );
        assert_eq!(bucket_key(&Key::PeerPrincipal, None), BucketKey::Unlimited);
        let constant = Key::Constant("all".into());
        assert_eq!(bucket_key(&constant, None), own("ratelimit:constant:all"));
        assert_eq!(bucket_key(&constant, Some(b"ignored")), own("ratelimit:constant:all"));
    }

    #[test]
    fn long_keys_share_the_overflow_bucket() {
        let header = Key::Header("x-user".into());
        let at_limit = "a".repeat(MAX_KEY_BYTES);
        assert!(matches!(
            bucket_key(&header, Some(at_limit.as_bytes())),
            BucketKey::Own(_)
        ));
        let over = "a".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(bucket_key(&header, Some(over.as_bytes())), BucketKey::Overflow);
        assert!(OVERFLOW_KEY.starts_with(KEY_PREFIX) && REGISTRY_KEY.starts_with(KEY_PREFIX));
    }

    #[test]
    fn header_values_match_the_decision() {
        let l = limits(10, 1, 1000);
        assert_eq!(
            limited_headers(&l, 3, 9),
            [
                ("retry-after", "3".to_owned()),
                ("x-ratelimit-limit", "10".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", "9".to_owned()),
            ]
        );
        assert_eq!(
            allowed_headers(&l, 4),
            [
                ("x-ratelimit-limit", "10".to_owned()),
                ("x-ratelimit-remaining", "4".to_owned()),
            ]
        );
    }
}
