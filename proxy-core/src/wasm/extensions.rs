//! Weft's host extensions, reached through `proxy_call_foreign_function` (see `docs/abi.md`).
//! Arguments and results are JSON.

use serde_json::Value;

use super::abi::{self, Status};
use super::host::HostState;
use super::props;
use crate::filter::UpstreamChoice;

/// Runs foreign function `name`; the result bytes go back to the guest.
pub(crate) fn call(state: &mut HostState, name: &str, args: &[u8]) -> Result<Vec<u8>, Status> {
    match name {
        "weft.set_upstream" => set_upstream(state, args),
        "weft.retry" => {
            if !state.stream.in_stream {
                return Err(Status::BadArgument);
            }
            let backoff = millis(args, "backoff_ms")?.unwrap_or_default();
            state.intents.retry = Some(backoff);
            Ok(Vec::new())
        }
        "weft.delay" => {
            if !state.stream.in_stream {
                return Err(Status::BadArgument);
            }
            let delay = millis(args, "ms")?.ok_or(Status::BadArgument)?;
            state.intents.delay = Some(delay);
            Ok(Vec::new())
        }
        "weft.properties" => properties(state, args),
        "weft.peer_principal" => {
            let info = state.stream.info.as_deref().ok_or(Status::NotFound)?;
            info.peer_principal
                .as_ref()
                .map(|p| p.as_bytes().to_vec())
                .ok_or(Status::NotFound)
        }
        _ => Err(Status::NotFound),
    }
}

/// Most properties one `weft.properties` call reads.
const MAX_BATCH: usize = 64;

/// Several properties in one call: `args` is a serialized map (the ABI's header-map encoding)
/// whose keys are property paths, segments separated by NUL as `proxy_get_property` takes them
/// (the values are ignored). The result is a serialized map with one pair per path asked, in
/// that order: key `1` and the value for a property that is set, an empty key and value for
/// one that is not.
fn properties(state: &HostState, args: &[u8]) -> Result<Vec<u8>, Status> {
    let asked = abi::map_pairs(args).ok_or(Status::BadArgument)?;
    if asked.len() > MAX_BATCH {
        return Err(Status::BadArgument);
    }
    // Every value in one buffer; (set, end) per path.
    let mut values = Vec::new();
    let mut ends = Vec::with_capacity(asked.len());
    let mut dotted = Vec::new();
    for (path, _) in asked {
        dotted.clear();
        dotted.extend_from_slice(path);
        props::dot_segments(&mut dotted);
        let set = std::str::from_utf8(&dotted).is_ok_and(|path| props::get(state, path, &mut values));
        ends.push((set, values.len()));
    }
    let (values, ends) = (&values, &ends);
    let pairs = || {
        let mut start = 0;
        ends.iter().map(move |&(set, end)| {
            let value = &values[start..end];
            start = end;
            if set { (&b"1"[..], value) } else { (&b""[..], value) }
        })
    };
    let mut out = Vec::new();
    abi::serialize_map_with(pairs, &mut out);
    Ok(out)
}

/// A duration in milliseconds from a JSON object's field (`{}` or empty args: `None`).
fn millis(args: &[u8], field: &str) -> Result<Option<std::time::Duration>, Status> {
    if args.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(args).map_err(|_| Status::SerializationFailure)?;
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|ms| Some(std::time::Duration::from_millis(ms.min(3_600_000))))
            .ok_or(Status::SerializationFailure),
    }
}

/// `{"cluster": "reviews", "subset": {"version": "v2"}, "hash_key": "jason", "timeout_ms": 3000,
/// "per_try_timeout_ms": 1000}`, every field optional.
fn set_upstream(state: &mut HostState, args: &[u8]) -> Result<Vec<u8>, Status> {
    if !state.stream.in_stream {
        return Err(Status::BadArgument);
    }
    let value: Value = serde_json::from_slice(args).map_err(|_| Status::SerializationFailure)?;
    let object = value.as_object().ok_or(Status::SerializationFailure)?;
    let mut choice = UpstreamChoice::default();
    for (key, value) in object {
        match (key.as_str(), value) {
            ("cluster", Value::String(c)) => choice.cluster = Some(c.clone()),
            ("hash_key", Value::String(k)) => choice.hash_key = Some(k.clone()),
            ("timeout_ms", Value::Number(n)) => {
                choice.timeout = Some(std::time::Duration::from_millis(
                    n.as_u64().ok_or(Status::SerializationFailure)?,
                ));
            }
            ("per_try_timeout_ms", Value::Number(n)) => {
                let ms = n.as_u64().ok_or(Status::SerializationFailure)?;
                choice.per_try_timeout = Some(std::time::Duration::from_millis(ms));
            }
            ("subset", Value::Object(labels)) => {
                let mut subset = std::collections::BTreeMap::new();
                for (k, v) in labels {
                    subset.insert(k.clone(), v.as_str().ok_or(Status::SerializationFailure)?.to_owned());
                }
                choice.subset = Some(subset);
            }
            _ => return Err(Status::SerializationFailure),
        }
    }
    state.intents.upstream = Some(choice);
    Ok(Vec::new())
}
