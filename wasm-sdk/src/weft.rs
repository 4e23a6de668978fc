//! Weft's host extensions (see `docs/abi.md`). They are Weft-only: on another proxy-wasm host
//! they answer `Err(Status::NotFound)`.

use std::collections::BTreeMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Where the proxy should send the request, chosen in `on_http_request_headers`. Unset fields
/// keep the route's choice.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Upstream {
    /// Cluster name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Only endpoints carrying these labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<BTreeMap<String, String>>,
    /// Key for `ring_hash` clusters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// Deadline of the whole request, across retries, in milliseconds (instead of the
    /// route's timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Deadline of each attempt, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
}

impl Upstream {
    /// The JSON the `weft.set_upstream` extension takes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Chooses the upstream for the current request (`weft.set_upstream`).
pub fn set_upstream(upstream: &Upstream) -> Result<(), Status> {
    hostcalls::call_foreign_function("weft.set_upstream", Some(upstream.to_json().as_bytes())).map(|_| ())
}

/// Asks the proxy to send the current request again, to another endpoint where there is one
/// (`weft.retry`); call it from `on_http_response_headers`. Requests with a streamed body of
/// unknown or large size cannot be replayed.
pub fn retry() -> Result<(), Status> {
    retry_after(0)
}

/// As [`retry`], after waiting `backoff_ms` milliseconds (the request's deadline still holds).
/// A failed attempt (connect failure, reset, timeout) reaches `on_http_response_headers` as a
/// local reply (502/503/504 with `x-weft-reason`), so it can be retried too.
pub fn retry_after(backoff_ms: u64) -> Result<(), Status> {
    let args = format!("{{\"backoff_ms\":{backoff_ms}}}");
    hostcalls::call_foreign_function("weft.retry", Some(args.as_bytes())).map(|_| ())
}

/// Holds the current request for `ms` milliseconds: call it in `on_http_request_headers` and
/// return `Action::Pause`; the proxy resumes the request when the time is up (fault delays).
pub fn delay(ms: u64) -> Result<(), Status> {
    let args = format!("{{\"ms\":{ms}}}");
    hostcalls::call_foreign_function("weft.delay", Some(args.as_bytes())).map(|_| ())
}

/// The downstream peer's identity (its SPIFFE ID) when the connection is mutual TLS.
pub fn peer_principal() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "principal"]).ok()??;
    String::from_utf8(bytes).ok().filter(|p| !p.is_empty())
}

/// A string property (`["request", "path"]`), if set.
pub fn string_property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
}

/// Several properties at once, in the order of `paths` (`None` for an absent one): one
/// hostcall (`weft.properties`) instead of one per property. On a host without the extension
/// each is read with `get_property`.
pub fn properties(paths: &[&[&str]]) -> Vec<Option<Vec<u8>>> {
    let keys: Vec<String> = paths.iter().map(|p| p.join("\0")).collect();
    let args = serialize_keys(&keys);
    match hostcalls::call_foreign_function("weft.properties", Some(&args)) {
        Ok(found) => {
            let found = found.as_deref().and_then(deserialize_map).unwrap_or_default();
            keys.iter()
                .map(|key| {
                    found
                        .iter()
                        .find(|(k, _)| *k == key.as_bytes())
                        .map(|(_, v)| v.to_vec())
                })
                .collect()
        }
        Err(_) => paths
            .iter()
            .map(|p| hostcalls::get_property(p.to_vec()).ok().flatten())
            .collect(),
    }
}

/// The ABI's map encoding of `keys` with empty values: a `u32` count, a `u32` key and value
/// length per pair, then each key and value followed by a NUL (little-endian).
fn serialize_keys(keys: &[String]) -> Vec<u8> {
    let size = 4 + keys.iter().map(|k| 10 + k.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for key in keys {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    for key in keys {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out
}

/// Pairs of the ABI's map encoding (borrowed); `None` when malformed.
fn deserialize_map(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let u32_at = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = u32_at(0)?;
    let mut sizes = 4;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (key_len, value_len) = (u32_at(sizes)?, u32_at(sizes + 4)?);
        sizes += 8;
        let key = bytes.get(data..data.checked_add(key_len)?)?;
        data += key_len + 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data += value_len + 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// An integer property (Envoy encodes them as 8 bytes, little-endian), if set.
pub fn int_property(path: &[&str]) -> Option<i64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn property_batches_round_trip_the_map_encoding() {
        let keys = vec!["request\0host".to_owned(), "response\0code".to_owned()];
        let bytes = super::serialize_keys(&keys);
        let pairs = super::deserialize_map(&bytes).expect("well formed");
        assert_eq!(
            pairs,
            [(&b"request\0host"[..], &b""[..]), (&b"response\0code"[..], &b""[..])]
        );
        assert!(super::deserialize_map(&bytes[..bytes.len() - 3]).is_none());
        assert_eq!(super::deserialize_map(&[0, 0, 0, 0]), Some(vec![]));
        assert!(super::deserialize_map(&[255, 255, 255, 255]).is_none());
    }

    use super::*;

    #[test]
    fn upstream_choices_serialize_only_what_is_set() {
        assert_eq!(Upstream::default().to_json(), "{}");
        let choice = Upstream {
            cluster: Some("reviews".into()),
            subset: Some(BTreeMap::from([("version".into(), "v2".into())])),
            ..Upstream::default()
        };
        assert_eq!(choice.to_json(), r#"{"cluster":"reviews","subset":{"version":"v2"}}"#);
    }
}
