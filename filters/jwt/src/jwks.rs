//! JSON Web Key Sets (RFC 7517): the public keys tokens are verified with.
//!
//! Supported keys: `RSA` (`n`, `e`) for RS256/RS384/RS512 and `EC` on `P-256` (`x`, `y`) for
//! ES256. Keys of other types (`oct`, `OKP`, other curves) or with an unsupported `alg` are
//! skipped, as are malformed ones; a set without a single usable key is an error.

use base64::Engine as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;

use crate::token::Alg;

/// A usable public key of a set.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// `kid`, if any.
    pub kid: Option<String>,
    /// `alg`, if any: then the key only verifies tokens with that algorithm.
    pub alg: Option<Alg>,
    /// The key material.
    pub key: KeyMaterial,
}

/// The public key itself.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    /// An RSA public key (RS256, RS384, RS512).
    Rsa(Box<RsaPublicKey>),
    /// A P-256 public key (ES256).
    P256(Box<p256::ecdsa::VerifyingKey>),
}

/// A parsed key set.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The usable keys, in the set's order.
    pub keys: Vec<Jwk>,
}

/// Base64url with or without padding (JWKs in the wild carry both).
pub(crate) const B64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`).
    pub fn parse(text: &[u8]) -> Result<Jwks, String> {
        let value: Value = serde_json::from_slice(text).map_err(|_| "Jwks is an invalid JSON".to_owned())?;
        Jwks::from_value(&value)
    }

    /// Builds a key set from an already parsed JWKS document.
    pub fn from_value(value: &Value) -> Result<Jwks, String> {
        let object = value.as_object().ok_or("Jwks is an invalid JSON")?;
        let keys = object.get("keys").ok_or("Jwks does not have [keys] field")?;
        let keys = keys.as_array().ok_or("[keys] in Jwks is not an array")?;
        let keys: Vec<Jwk> = keys.iter().filter_map(|key| parse_key(key).ok()).collect();
        if keys.is_empty() {
            return Err("Jwks doesn't have any valid public key".to_owned());
        }
        Ok(Jwks { keys })
    }
}

/// A shared-data cache entry: `<expires_ms>\n<jwks document>`.
pub fn cache_entry(expires_ms: u64, jwks: &[u8]) -> Vec<u8> {
    let mut entry = format!("{expires_ms}\n").into_bytes();
    entry.extend_from_slice(jwks);
    entry
}

/// Splits a [`cache_entry`] into its expiry (ms since the epoch) and the document.
pub fn split_cache_entry(entry: &[u8]) -> Option<(u64, &[u8])> {
    let newline = entry.iter().position(|&b| b == b'\n')?;
    let expires = std::str::from_utf8(entry.get(..newline)?).ok()?.parse().ok()?;
    Some((expires, entry.get(newline + 1..)?))
}

fn string_field<'a>(key: &'a serde_json::Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match key.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("[{name}] is not a string")),
    }
}

fn required_bytes(key: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = string_field(key, name)?.ok_or_else(|| format!("[{name}] is missing"))?;
    B64URL
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("[{name}] is an invalid Base64url"))
}

/// Parses one key; `Err` says why it is unusable.
fn parse_key(value: &Value) -> Result<Jwk, String> {
    let key = value.as_object().ok_or("a key is not an object")?;
    let kty = string_field(key, "kty")?.ok_or("[kty] is missing in [keys]")?;
    let kid = string_field(key, "kid")?.map(str::to_owned);
    let alg = match string_field(key, "alg")? {
        None => None,
        Some(name) => Some(Alg::from_name(name).ok_or_else(|| format!("[alg] {name} is not supported"))?),
    };
    let material = match kty {
        "RSA" => {
            if alg.is_some_and(|a| !a.is_rsa()) {
                return Err("[alg] is not started with [RS] for an RSA key".into());
            }
            let n = BigUint::from_bytes_be(&required_bytes(key, "n")?);
            let e = BigUint::from_bytes_be(&required_bytes(key, "e")?);
            let public = RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            KeyMaterial::Rsa(Box::new(public))
        }
        "EC" => {
            if alg.is_some_and(|a| a != Alg::Es256) {
                return Err("[alg] is not supported for an EC key".into());
            }
            match string_field(key, "crv")? {
                Some("P-256") | None => {}
                Some(_) => return Err("[crv] is not supported for an EC key".into()),
            }
            let x = required_bytes(key, "x")?;
            let y = required_bytes(key, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("Jwks EC [x] and [y] fields have a parse error.".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
            let verifying = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "Jwks EC create key fail".to_owned())?;
            KeyMaterial::P256(Box::new(verifying))
        }
        other => return Err(format!("[kty] {other} is not supported in [keys]")),
    };
    Ok(Jwk {
        kid,
        alg,
        key: material,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test key set of `proxy-core/tests/all/keys` (an RSA key `rsa-1`, a P-256 key `ec-1`).
    pub(crate) const TEST_JWKS: &str = include_str!("../../../proxy-core/tests/all/keys/jwks.json");

    #[test]
    fn cache_entries_round_trip() {
        let entry = cache_entry(123, b"{\"keys\":[]}");
        assert_eq!(split_cache_entry(&entry), Some((123, &b"{\"keys\":[]}"[..])));
        assert_eq!(split_cache_entry(b"x\n{}"), None);
        assert_eq!(split_cache_entry(b"123"), None);
    }

    #[test]
    fn the_test_key_set_parses() {
        let jwks = Jwks::parse(TEST_JWKS.as_bytes()).expect("jwks");
        assert_eq!(jwks.keys.len(), 2);
        assert_eq!(jwks.keys[0].kid.as_deref(), Some("rsa-1"));
        assert!(matches!(jwks.keys[0].key, KeyMaterial::Rsa(_)));
        assert_eq!(jwks.keys[1].alg, Some(Alg::Es256));
        assert!(matches!(jwks.keys[1].key, KeyMaterial::P256(_)));
    }

    #[test]
    fn unusable_keys_are_skipped_and_empty_sets_refused() {
        let text = r#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "RSA", "n": "!!!", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"n": "AQAB"}
        ]}"#;
        assert_eq!(
            Jwks::parse(text.as_bytes()).expect_err("no usable key"),
            "Jwks doesn't have any valid public key"
        );
        assert_eq!(Jwks::parse(b"nope").expect_err("json"), "Jwks is an invalid JSON");
        assert_eq!(Jwks::parse(b"{}").expect_err("keys"), "Jwks does not have [keys] field");
        assert_eq!(
            Jwks::parse(br#"{"keys": {}}"#).expect_err("array"),
            "[keys] in Jwks is not an array"
        );
        // One good key among bad ones is enough.
        let value: Value = serde_json::from_str(TEST_JWKS).expect("json");
        let mut keys = value["keys"].as_array().expect("keys").clone();
        keys.insert(0, serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}));
        let jwks = Jwks::from_value(&serde_json::json!({ "keys": keys })).expect("jwks");
        assert_eq!(jwks.keys.len(), 2);
    }
}
