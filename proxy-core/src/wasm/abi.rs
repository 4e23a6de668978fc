//! proxy-wasm ABI 0.2.1 constants and encodings: status codes, enums, the header-map and
//! property serializations.

/// Status codes returned by hostcalls. Only the codes the Rust SDK expects on each path are
/// used (it panics on others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

impl Status {
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// Header map types (`MapType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    CallResponseHeaders,
    CallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::CallResponseHeaders,
            7 => MapType::CallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffer types (`BufferType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferType {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    CallResponseBody,
    GrpcReceive,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::CallResponseBody,
            5 => BufferType::GrpcReceive,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Metric types (`MetricType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// Most pairs a header map handed to or taken from a guest may hold.
pub(crate) const MAX_MAP_PAIRS: usize = 1024;
/// Most bytes a serialized header map may take.
pub(crate) const MAX_MAP_BYTES: usize = 1024 * 1024;

/// Serializes pairs in the proxy-wasm map format: count, (key len, value len)*, then each key
/// and value followed by a NUL.
pub(crate) fn serialize_map<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let mut out = Vec::new();
    serialize_map_into(pairs, &mut out);
    out
}

/// As [`serialize_map`], appending to `out` (a buffer reused across calls).
pub(crate) fn serialize_map_into<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone, out: &mut Vec<u8>) {
    serialize_map_with(|| pairs.clone(), out);
}

/// As [`serialize_map_into`], for pairs that can be walked again but not cloned.
pub(crate) fn serialize_map_with<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(
    pairs: impl Fn() -> I,
    out: &mut Vec<u8>,
) {
    let (count, size) = pairs().fold((0usize, 4usize), |(n, size), (k, v)| {
        (n + 1, size + 10 + k.len() + v.len())
    });
    out.reserve(size);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs() {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
}

/// Parses the proxy-wasm map format, checking every length against the buffer and the
/// bounds above. `None` for anything malformed.
pub(crate) fn deserialize_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let pairs = map_pairs(bytes)?;
    Some(pairs.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
}

/// As [`deserialize_map`], borrowing the keys and values.
pub(crate) fn map_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    if bytes.len() > MAX_MAP_BYTES {
        return None;
    }
    let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if count > MAX_MAP_PAIRS {
        return None;
    }
    let mut lengths = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        lengths.push((k, v));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in lengths {
        let key = bytes.get(at..at.checked_add(k)?)?;
        at = at.checked_add(k + 1)?;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at = at.checked_add(v + 1)?;
        pairs.push((key, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x"), (b"x-a", b""), (b"", b"v")];
        let bytes = serialize_map(pairs.iter().copied());
        let back = deserialize_map(&bytes).expect("parses");
        assert_eq!(
            back,
            pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect::<Vec<_>>()
        );
    }

    #[test]
    fn malformed_maps_are_refused() {
        assert!(deserialize_map(&[1, 0, 0]).is_none(), "short count");
        assert!(
            deserialize_map(&[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]).is_none(),
            "key past the end"
        );
        let mut huge = (MAX_MAP_PAIRS as u32 + 1).to_le_bytes().to_vec();
        huge.extend(vec![0; 64]);
        assert!(deserialize_map(&huge).is_none(), "too many pairs");
        let mut overflow = 1u32.to_le_bytes().to_vec();
        overflow.extend(u32::MAX.to_le_bytes());
        overflow.extend(0u32.to_le_bytes());
        assert!(deserialize_map(&overflow).is_none(), "length overflow");
    }
}
