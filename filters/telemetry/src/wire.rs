//! Property encodings (docs/abi.md §4): maps in the proxy-wasm header-map format, integers as
//! 8 bytes little-endian, booleans as one byte. Malformed input decodes to `None`.

use std::collections::BTreeMap;

/// A map property (`node.metadata.LABELS`): a `u32` pair count, then each pair's key and
/// value lengths (`u32` each), then each key and value followed by a NUL. Keys and values
/// that are not UTF-8 are replaced lossily.
pub fn decode_map(bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    if bytes.is_empty() {
        return Some(BTreeMap::new());
    }
    let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
    // Each pair takes at least 10 bytes: two lengths and two NULs.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut lengths = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        lengths.push((read_u32(bytes, at)? as usize, read_u32(bytes, at + 4)? as usize));
    }
    let mut at = 4 + count * 8;
    let mut out = BTreeMap::new();
    for (key_len, value_len) in lengths {
        let key = take(bytes, &mut at, key_len)?;
        let value = take(bytes, &mut at, value_len)?;
        out.insert(
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    Some(out)
}

/// `len` bytes at `*at` followed by a NUL; advances past the NUL.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len)?;
    let data = bytes.get(*at..end)?;
    if *bytes.get(end)? != 0 {
        return None;
    }
    *at = end + 1;
    Some(data)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// An integer property.
pub fn decode_int(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// A boolean property.
pub fn decode_bool(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [b] => Some(*b != 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(v.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn maps_decode_and_malformed_ones_do_not() {
        let bytes = encode(&[
            ("app", "reviews"),
            ("version", ""),
            ("service.istio.io/canonical-name", "r"),
        ]);
        let map = decode_map(&bytes).expect("valid");
        assert_eq!(map.len(), 3);
        assert_eq!(map["app"], "reviews");
        assert_eq!(map["version"], "");
        assert_eq!(decode_map(&[]), Some(BTreeMap::new()));
        assert_eq!(decode_map(&encode(&[])), Some(BTreeMap::new()));
        for cut in 1..bytes.len() {
            assert_eq!(decode_map(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut no_nul = bytes.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(decode_map(&no_nul), None);
        assert_eq!(decode_map(&u32::MAX.to_le_bytes()), None);
        let mut huge_len = encode(&[("a", "b")]);
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_map(&huge_len), None);
    }

    #[test]
    fn ints_and_bools_decode() {
        assert_eq!(decode_int(&42i64.to_le_bytes()), Some(42));
        assert_eq!(decode_int(&[1, 2, 3]), None);
        assert_eq!(decode_bool(&[1]), Some(true));
        assert_eq!(decode_bool(&[0]), Some(false));
        assert_eq!(decode_bool(&[]), None);
        assert_eq!(decode_bool(&[1, 1]), None);
    }
}
