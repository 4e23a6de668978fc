//! The local workload as the proxy describes it: `node.metadata.LABELS` (a map property) and
//! `node.metadata.NAMESPACE`, read only when a route asks for them.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use crate::matching::Workload;

/// Decodes a proxy-wasm map (`u32` count, then `u32` key and value lengths per pair, then
/// each key and value followed by a NUL; little-endian). `None` if malformed.
pub fn decode_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    let count = word(0)?;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (key_len, value_len) = (word(sizes_at)?, word(sizes_at + 4)?);
        sizes_at += 8;
        let key = bytes.get(data_at..data_at.checked_add(key_len)?)?;
        data_at += key_len + 1;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at += value_len + 1;
        pairs.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Some(pairs)
}

/// The workload this proxy runs beside, from the node properties, read lazily.
#[derive(Default)]
pub struct NodeWorkload {
    labels: OnceCell<BTreeMap<String, String>>,
    namespace: OnceCell<Option<String>>,
}

impl Workload for NodeWorkload {
    fn labels(&self) -> &BTreeMap<String, String> {
        self.labels.get_or_init(|| {
            weft_sdk::proxy_wasm::hostcalls::get_property(vec!["node", "metadata", "LABELS"])
                .ok()
                .flatten()
                .and_then(|bytes| decode_map(&bytes))
                .map(|pairs| pairs.into_iter().collect())
                .unwrap_or_default()
        })
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace
            .get_or_init(|| weft_sdk::weft::string_property(&["node", "metadata", "NAMESPACE"]))
            .as_deref()
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
    fn maps_decode_and_malformed_ones_are_refused() {
        let bytes = encode(&[("app", "productpage"), ("version", "")]);
        assert_eq!(
            decode_map(&bytes),
            Some(vec![
                ("app".into(), "productpage".into()),
                ("version".into(), "".into())
            ])
        );
        assert_eq!(decode_map(&encode(&[])), Some(vec![]));
        assert_eq!(decode_map(&bytes[..bytes.len() - 3]), None);
        assert_eq!(decode_map(&[]), None);
        assert_eq!(decode_map(&[255, 255, 255, 255]), None);
    }
}
