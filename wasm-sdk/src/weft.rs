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
    let args = serialize_paths(paths);
    let answer = hostcalls::call_foreign_function("weft.properties", Some(&args));
    if let Ok(Some(bytes)) = &answer
        && let Some(values) = positional_values(bytes, paths.len())
    {
        return values;
    }
    paths
        .iter()
        .map(|p| hostcalls::get_property(p.to_vec()).ok().flatten())
        .collect()
}

/// The ABI's map encoding of `paths` (segments joined by NUL) as keys with empty values: a
/// `u32` count, a `u32` key and value length per pair, then each key and value followed by a
/// NUL (little-endian).
fn serialize_paths(paths: &[&[&str]]) -> Vec<u8> {
    let key_len = |path: &[&str]| path.iter().map(|s| s.len()).sum::<usize>() + path.len().saturating_sub(1);
    let size = 4 + paths.iter().map(|p| 10 + key_len(p)).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(paths.len() as u32).to_le_bytes());
    for path in paths {
        out.extend_from_slice(&(key_len(path) as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    for path in paths {
        for (i, segment) in path.iter().enumerate() {
            if i > 0 {
                out.push(0);
            }
            out.extend_from_slice(segment.as_bytes());
        }
        out.extend_from_slice(&[0, 0]);
    }
    out
}

/// The values of a `weft.properties` answer: `count` pairs, key `1` for a set property (with
/// its value), empty for an unset one. `None` when malformed.
fn positional_values(bytes: &[u8], count: usize) -> Option<Vec<Option<Vec<u8>>>> {
    let u32_at = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    if u32_at(0)? != count {
        return None;
    }
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut values = Vec::with_capacity(count);
    for i in 0..count {
        let (key_len, value_len) = (u32_at(4 + 8 * i)?, u32_at(8 + 8 * i)?);
        let value_at = data.checked_add(key_len)?.checked_add(1)?;
        let value = bytes.get(value_at..value_at.checked_add(value_len)?)?;
        values.push((key_len == 1).then(|| value.to_vec()));
        data = value_at.checked_add(value_len)?.checked_add(1)?;
    }
    Some(values)
}

/// An integer property (Envoy encodes them as 8 bytes, little-endian), if set.
pub fn int_property(path: &[&str]) -> Option<i64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_batches_encode_paths_and_decode_answers_by_position() {
        let args = serialize_paths(&[&["request", "host"], &["plugin_name"]]);
        let mut expected = vec![2, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"request\0host\0\0plugin_name\0\0");
        assert_eq!(args, expected);
        // Two answers: the first set ("1" => "a.b"), the second not ("" => "").
        let mut answer = vec![2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        answer.extend_from_slice(b"1\0a.b\0\0\0");
        assert_eq!(positional_values(&answer, 2), Some(vec![Some(b"a.b".to_vec()), None]));
        assert_eq!(positional_values(&answer, 3), None, "wrong count");
        assert_eq!(positional_values(&answer[..answer.len() - 4], 2), None, "truncated");
    }

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
