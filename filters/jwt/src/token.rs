//! JSON Web Tokens (RFC 7519, compact JWS): parsing, claim checks and signature verification,
//! with the checks, their order and their failure messages of Envoy's `jwt_authn` filter
//! (`jwt_verify_lib`), which Istio's RequestAuthentication runs on.

use base64::Engine as _;
use rsa::Pkcs1v15Sign;
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::jwks::{B64URL, Jwks, KeyMaterial};

/// Default clock skew allowed on `exp` and `nbf`, in seconds (Envoy's default).
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// A supported signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// The algorithm named `name` (`RS256`, ...), if supported.
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "RS384" => Some(Alg::Rs384),
            "RS512" => Some(Alg::Rs512),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    /// Whether this is an RSA algorithm.
    pub fn is_rsa(self) -> bool {
        matches!(self, Alg::Rs256 | Alg::Rs384 | Alg::Rs512)
    }
}

/// Why a token was refused. [`Error::message`] is Envoy's text for it, used as the body of
/// the local reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not three dot-separated parts.
    BadFormat,
    /// Header not base64url.
    HeaderBadBase64,
    /// Header not a JSON object.
    HeaderBadJson,
    /// `alg` missing or not a string.
    HeaderBadAlg,
    /// `alg` not supported (e.g. `none`, `HS256`).
    HeaderNotImplementedAlg,
    /// `kid` not a string.
    HeaderBadKid,
    /// Payload not base64url.
    PayloadBadBase64,
    /// Payload not a JSON object.
    PayloadBadJson,
    /// `iss` not a string.
    IssNotString,
    /// `sub` not a string.
    SubNotString,
    /// `iat` not an integer.
    IatNotInteger,
    /// `iat` negative.
    IatNotPositive,
    /// `nbf` not an integer.
    NbfNotInteger,
    /// `nbf` negative.
    NbfNotPositive,
    /// `exp` not an integer.
    ExpNotInteger,
    /// `exp` negative.
    ExpNotPositive,
    /// `jti` not a string.
    JtiNotString,
    /// `aud` not a string or a list of strings.
    AudNotString,
    /// Signature not base64url.
    SignatureBadBase64,
    /// No rule for the token's issuer at the place it was found.
    UnknownIssuer,
    /// `nbf` in the future.
    NotYetValid,
    /// `exp` in the past.
    Expired,
    /// No `aud` among the rule's audiences.
    AudienceNotAllowed,
    /// No key of the set fits the token's `kid` and `alg`.
    KidAlgMismatch,
    /// The signature does not verify.
    VerificationFail,
    /// The key set could not be fetched (and none is cached).
    JwksFetchFail,
    /// The fetched key set has no usable key.
    JwksNoValidKeys,
}

impl Error {
    /// Envoy's message for this failure (`jwt_verify_lib`'s status strings).
    pub fn message(self) -> &'static str {
        match self {
            Error::BadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            Error::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            Error::HeaderBadJson => "Jwt header is an invalid JSON",
            Error::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Error::HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Error::HeaderBadKid => "Jwt header [kid] field is not a string",
            Error::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Error::PayloadBadJson => "Jwt payload is an invalid JSON",
            Error::IssNotString => "Jwt payload [iss] field is not a string",
            Error::SubNotString => "Jwt payload [sub] field is not a string",
            Error::IatNotInteger => "Jwt payload [iat] field is not an integer",
            Error::IatNotPositive => "Jwt payload [iat] field is not a positive integer",
            Error::NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Error::NbfNotPositive => "Jwt payload [nbf] field is not a positive integer",
            Error::ExpNotInteger => "Jwt payload [exp] field is not an integer",
            Error::ExpNotPositive => "Jwt payload [exp] field is not a positive integer",
            Error::JtiNotString => "Jwt payload [jti] field is not a string",
            Error::AudNotString => "Jwt payload [aud] field is not a string or string list",
            Error::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Error::UnknownIssuer => "Jwt issuer is not configured",
            Error::NotYetValid => "Jwt not yet valid",
            Error::Expired => "Jwt is expired",
            Error::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Error::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Error::VerificationFail => "Jwt verification fails",
            Error::JwksFetchFail => "Jwks remote fetch is failed",
            Error::JwksNoValidKeys => "Jwks doesn't have any valid public key",
        }
    }

    /// The HTTP status of the local reply: 403 for a disallowed audience, else 401 (as Envoy).
    pub fn http_status(self) -> u32 {
        if self == Error::AudienceNotAllowed { 403 } else { 401 }
    }
}

/// A parsed (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// Header `alg`.
    pub alg: Alg,
    /// Header `kid`.
    pub kid: Option<String>,
    /// The payload segment as received (base64url), for `output_payload_to_header`.
    pub payload_b64: String,
    /// The decoded payload JSON text.
    pub payload_json: String,
    /// The payload, parsed.
    pub claims: Map<String, Value>,
    /// `iss`, empty if absent.
    pub iss: String,
    /// `sub`, empty if absent.
    pub sub: String,
    /// `aud` (a string becomes a one-element list).
    pub audiences: Vec<String>,
    /// `exp`, if present.
    pub exp: Option<u64>,
    /// `nbf`, if present.
    pub nbf: Option<u64>,
    signing_input: String,
    signature: Vec<u8>,
}

fn optional_string(claims: &Map<String, Value>, name: &str, error: Error) -> Result<String, Error> {
    match claims.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(error),
    }
}

fn optional_time(
    claims: &Map<String, Value>,
    name: &str,
    not_integer: Error,
    negative: Error,
) -> Result<Option<u64>, Error> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(not_integer);
    };
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    if number.as_i64().is_some() {
        return Err(negative);
    }
    // A float: accepted and truncated, as jwt_verify_lib reads protobuf doubles.
    match number.as_f64() {
        Some(f) if f < 0.0 => Err(negative),
        Some(f) if f.is_finite() && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(not_integer),
    }
}

impl Jwt {
    /// Parses a compact token, checking the header and the registered claims' types.
    pub fn parse(token: &str) -> Result<Jwt, Error> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::BadFormat);
        };
        let header = B64URL.decode(header_b64).map_err(|_| Error::HeaderBadBase64)?;
        let header: Value = serde_json::from_slice(&header).map_err(|_| Error::HeaderBadJson)?;
        let header = header.as_object().ok_or(Error::HeaderBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => Alg::from_name(name).ok_or(Error::HeaderNotImplementedAlg)?,
            _ => return Err(Error::HeaderBadAlg),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(Error::HeaderBadKid),
        };

        let payload = B64URL.decode(payload_b64).map_err(|_| Error::PayloadBadBase64)?;
        let payload_json = String::from_utf8(payload).map_err(|_| Error::PayloadBadJson)?;
        let claims: Value = serde_json::from_str(&payload_json).map_err(|_| Error::PayloadBadJson)?;
        let Value::Object(claims) = claims else {
            return Err(Error::PayloadBadJson);
        };
        let iss = optional_string(&claims, "iss", Error::IssNotString)?;
        let sub = optional_string(&claims, "sub", Error::SubNotString)?;
        optional_time(&claims, "iat", Error::IatNotInteger, Error::IatNotPositive)?;
        let nbf = optional_time(&claims, "nbf", Error::NbfNotInteger, Error::NbfNotPositive)?;
        let exp = optional_time(&claims, "exp", Error::ExpNotInteger, Error::ExpNotPositive)?;
        optional_string(&claims, "jti", Error::JtiNotString)?;
        let audiences = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_owned).ok_or(Error::AudNotString))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Error::AudNotString),
        };

        let signature = B64URL.decode(signature_b64).map_err(|_| Error::SignatureBadBase64)?;
        Ok(Jwt {
            alg,
            kid,
            payload_b64: payload_b64.to_owned(),
            payload_json,
            claims,
            iss,
            sub,
            audiences,
            exp,
            nbf,
            signing_input: format!("{header_b64}.{payload_b64}"),
            signature,
        })
    }

    /// Checks `nbf` and `exp` against `now` (seconds since the epoch), allowing `skew` seconds.
    pub fn verify_time(&self, now: u64, skew: u64) -> Result<(), Error> {
        if self.nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
            return Err(Error::NotYetValid);
        }
        if self.exp.is_some_and(|exp| now > exp.saturating_add(skew)) {
            return Err(Error::Expired);
        }
        Ok(())
    }

    /// Whether an `aud` of the token is among `allowed` (any token when `allowed` is empty).
    /// As Envoy, an `http://` or `https://` scheme and a trailing `/` are ignored on both
    /// sides.
    pub fn audience_allowed(&self, allowed: &[String]) -> bool {
        if allowed.is_empty() {
            return true;
        }
        self.audiences
            .iter()
            .any(|aud| allowed.iter().any(|a| sanitize_audience(a) == sanitize_audience(aud)))
    }

    /// Verifies the signature with the keys of `jwks` that fit the token's `kid` and `alg`.
    pub fn verify_signature(&self, jwks: &Jwks) -> Result<(), Error> {
        let mut candidate = false;
        for jwk in &jwks.keys {
            if let (Some(want), Some(have)) = (&self.kid, &jwk.kid)
                && want != have
            {
                continue;
            }
            if jwk.alg.is_some_and(|alg| alg != self.alg) {
                continue;
            }
            let verified = match (&jwk.key, self.alg) {
                (KeyMaterial::Rsa(key), alg) if alg.is_rsa() => {
                    candidate = true;
                    self.verify_rsa(key, alg)
                }
                (KeyMaterial::P256(key), Alg::Es256) => {
                    candidate = true;
                    self.verify_es256(key)
                }
                _ => false,
            };
            if verified {
                return Ok(());
            }
        }
        Err(if candidate {
            Error::VerificationFail
        } else {
            Error::KidAlgMismatch
        })
    }

    fn verify_rsa(&self, key: &rsa::RsaPublicKey, alg: Alg) -> bool {
        let input = self.signing_input.as_bytes();
        let result = match alg {
            Alg::Rs384 => key.verify(
                Pkcs1v15Sign::new::<sha2::Sha384>(),
                &sha2::Sha384::digest(input),
                &self.signature,
            ),
            Alg::Rs512 => key.verify(
                Pkcs1v15Sign::new::<sha2::Sha512>(),
                &sha2::Sha512::digest(input),
                &self.signature,
            ),
            _ => key.verify(
                Pkcs1v15Sign::new::<sha2::Sha256>(),
                &sha2::Sha256::digest(input),
                &self.signature,
            ),
        };
        result.is_ok()
    }

    fn verify_es256(&self, key: &p256::ecdsa::VerifyingKey) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        // JWS carries the raw `r || s` (64 bytes), not DER.
        let Ok(signature) = p256::ecdsa::Signature::from_slice(&self.signature) else {
            return false;
        };
        self.signature.len() == 64 && key.verify(self.signing_input.as_bytes(), &signature).is_ok()
    }

    /// A claim by dotted path (`"sub"`, `"address.country"`), as Envoy's claim lookup.
    pub fn claim(&self, path: &str) -> Option<&Value> {
        claim_at(&self.claims, path)
    }
}

/// The value at a dotted path in a claims object.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A claim as a header value: strings as is, integers without a fraction, other numbers with
/// six decimals (as Envoy), booleans as `true`/`false`; objects, lists and null give `None`.
pub fn claim_header_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                n.as_f64().map(|f| format!("{f:.6}"))
            }
        }
        _ => None,
    }
}

fn sanitize_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("https://")
        .or_else(|| aud.strip_prefix("http://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::tests::TEST_JWKS;

    macro_rules! token {
        ($name:literal) => {
            include_str!(concat!("../../../proxy-core/tests/all/keys/", $name, ".jwt")).trim()
        };
    }

    const NOW: u64 = 1_800_000_000;

    fn jwks() -> Jwks {
        Jwks::parse(TEST_JWKS.as_bytes()).expect("jwks")
    }

    fn b64(text: &str) -> String {
        B64URL.encode(text)
    }

    #[test]
    fn rs256_and_es256_tokens_verify() {
        let alice = Jwt::parse(token!("rs256_alice")).expect("parse");
        assert_eq!(alice.alg, Alg::Rs256);
        assert_eq!(alice.kid.as_deref(), Some("rsa-1"));
        assert_eq!(
            (alice.iss.as_str(), alice.sub.as_str()),
            ("https://issuer.weft.test", "alice")
        );
        assert_eq!(alice.audiences, ["weft-api"]);
        assert_eq!(alice.exp, Some(4_102_444_800));
        alice.verify_signature(&jwks()).expect("rs256 verifies");
        alice.verify_time(NOW, CLOCK_SKEW_SECONDS).expect("valid now");

        let bob = Jwt::parse(token!("es256_bob")).expect("parse");
        assert_eq!(bob.alg, Alg::Es256);
        assert_eq!(bob.audiences, ["weft-api", "other"]);
        bob.verify_signature(&jwks()).expect("es256 verifies");
        assert_eq!(bob.claim("groups"), Some(&serde_json::json!(["dev"])));
    }

    #[test]
    fn tampering_and_unknown_keys_fail_verification() {
        let alice = token!("rs256_alice");
        let parts: Vec<&str> = alice.split('.').collect();
        // Another payload under the original signature.
        let forged_payload = b64(r#"{"iss":"https://issuer.weft.test","sub":"admin","aud":"weft-api"}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        let jwt = Jwt::parse(&forged).expect("parses");
        assert_eq!(jwt.verify_signature(&jwks()), Err(Error::VerificationFail));
        // One signature character changed.
        let mut signature: Vec<char> = parts[2].chars().collect();
        signature[10] = if signature[10] == 'A' { 'B' } else { 'A' };
        let flipped = format!("{}.{}.{}", parts[0], parts[1], signature.iter().collect::<String>());
        let jwt = Jwt::parse(&flipped).expect("parses");
        assert_eq!(jwt.verify_signature(&jwks()), Err(Error::VerificationFail));

        let other = Jwt::parse(token!("rs256_unknown_key")).expect("parses");
        assert_eq!(other.verify_signature(&jwks()), Err(Error::VerificationFail));

        // An ES256 signature checked against the RSA key only: no candidate key.
        let bob = Jwt::parse(token!("es256_bob")).expect("parses");
        let rsa_only = Jwks {
            keys: jwks().keys.into_iter().take(1).collect(),
        };
        assert_eq!(bob.verify_signature(&rsa_only), Err(Error::KidAlgMismatch));
        // A kid that no key has.
        let header = b64(r#"{"alg":"RS256","kid":"nope"}"#);
        let jwt = Jwt::parse(&format!("{header}.{}.{}", parts[1], parts[2])).expect("parses");
        assert_eq!(jwt.verify_signature(&jwks()), Err(Error::KidAlgMismatch));
        // Without a kid, every key of the right type is tried.
        let header = b64(r#"{"alg":"RS256"}"#);
        let jwt = Jwt::parse(&format!("{header}.{}.{}", parts[1], parts[2])).expect("parses");
        assert_eq!(
            jwt.verify_signature(&jwks()),
            Err(Error::VerificationFail),
            "header is signed too"
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let payload = b64(r#"{"iss":"i"}"#);
        let header = b64(r#"{"alg":"RS256"}"#);
        let cases = [
            ("abc".to_owned(), Error::BadFormat),
            ("a.b.c.d".to_owned(), Error::BadFormat),
            (format!("!!.{payload}.AA"), Error::HeaderBadBase64),
            (format!("{}.{payload}.AA", b64("[1]")), Error::HeaderBadJson),
            (format!("{}.{payload}.AA", b64(r#"{"typ":"JWT"}"#)), Error::HeaderBadAlg),
            (
                format!("{}.{payload}.AA", b64(r#"{"alg":"none"}"#)),
                Error::HeaderNotImplementedAlg,
            ),
            (
                format!("{}.{payload}.AA", b64(r#"{"alg":"HS256"}"#)),
                Error::HeaderNotImplementedAlg,
            ),
            (
                format!("{}.{payload}.AA", b64(r#"{"alg":"RS256","kid":1}"#)),
                Error::HeaderBadKid,
            ),
            (format!("{header}.!!.AA"), Error::PayloadBadBase64),
            (format!("{header}.{}.AA", b64("nope")), Error::PayloadBadJson),
            (format!("{header}.{}.AA", b64(r#"{"iss":1}"#)), Error::IssNotString),
            (format!("{header}.{}.AA", b64(r#"{"sub":[]}"#)), Error::SubNotString),
            (
                format!("{header}.{}.AA", b64(r#"{"exp":"soon"}"#)),
                Error::ExpNotInteger,
            ),
            (format!("{header}.{}.AA", b64(r#"{"exp":-5}"#)), Error::ExpNotPositive),
            (format!("{header}.{}.AA", b64(r#"{"nbf":true}"#)), Error::NbfNotInteger),
            (format!("{header}.{}.AA", b64(r#"{"iat":"x"}"#)), Error::IatNotInteger),
            (format!("{header}.{}.AA", b64(r#"{"aud":[1]}"#)), Error::AudNotString),
            (format!("{header}.{}.AA", b64(r#"{"jti":2}"#)), Error::JtiNotString),
            (format!("{header}.{payload}.!!"), Error::SignatureBadBase64),
        ];
        for (token, want) in cases {
            assert_eq!(Jwt::parse(&token).map(|_| ()), Err(want), "{token}");
        }
        assert_eq!(
            Error::BadFormat.message(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        );
    }

    #[test]
    fn time_checks_allow_the_clock_skew() {
        let expired = Jwt::parse(token!("rs256_expired")).expect("parse");
        assert_eq!(expired.verify_time(NOW, CLOCK_SKEW_SECONDS), Err(Error::Expired));
        let not_yet = Jwt::parse(token!("rs256_not_yet_valid")).expect("parse");
        assert_eq!(not_yet.verify_time(NOW, CLOCK_SKEW_SECONDS), Err(Error::NotYetValid));

        let header = b64(r#"{"alg":"RS256"}"#);
        let at = |claims: &str| Jwt::parse(&format!("{header}.{}.AA", b64(claims))).expect("parse");
        let jwt = at(r#"{"exp":1000,"nbf":900}"#);
        assert_eq!(jwt.verify_time(1060, 60), Ok(()), "exp + skew");
        assert_eq!(jwt.verify_time(1061, 60), Err(Error::Expired));
        assert_eq!(jwt.verify_time(840, 60), Ok(()), "nbf - skew");
        assert_eq!(jwt.verify_time(839, 60), Err(Error::NotYetValid));
        assert_eq!(at("{}").verify_time(u64::MAX, 60), Ok(()), "no exp: no expiry");
        assert_eq!(at(r#"{"exp":1000.7}"#).exp, Some(1000));
    }

    #[test]
    fn audiences_match_like_envoy() {
        let header = b64(r#"{"alg":"RS256"}"#);
        let with = |aud: &str| Jwt::parse(&format!("{header}.{}.AA", b64(aud))).expect("parse");
        let allowed = vec!["weft-api".to_owned(), "https://svc.example.com/".to_owned()];
        assert!(with(r#"{"aud":"weft-api"}"#).audience_allowed(&allowed));
        assert!(with(r#"{"aud":["x","weft-api"]}"#).audience_allowed(&allowed));
        assert!(with(r#"{"aud":"http://svc.example.com"}"#).audience_allowed(&allowed));
        assert!(!with(r#"{"aud":"weft"}"#).audience_allowed(&allowed));
        assert!(!with("{}").audience_allowed(&allowed), "no aud, audiences required");
        assert!(with("{}").audience_allowed(&[]), "no audiences configured");
    }

    #[test]
    fn claims_are_found_by_dotted_path_and_rendered_for_headers() {
        let header = b64(r#"{"alg":"RS256"}"#);
        let claims = r#"{"sub":"a","n":42,"f":1.5,"ok":true,"o":{"k":"v"},"l":[1],"a.b":"dot","e":""}"#;
        let jwt = Jwt::parse(&format!("{header}.{}.AA", b64(claims))).expect("parse");
        let value = |path: &str| jwt.claim(path).and_then(claim_header_value);
        assert_eq!(value("sub").as_deref(), Some("a"));
        assert_eq!(value("n").as_deref(), Some("42"));
        assert_eq!(value("f").as_deref(), Some("1.500000"));
        assert_eq!(value("ok").as_deref(), Some("true"));
        assert_eq!(value("o.k").as_deref(), Some("v"));
        assert_eq!(value("a.b").as_deref(), Some("dot"));
        assert_eq!(value("o"), None);
        assert_eq!(value("l"), None);
        assert_eq!(value("e"), None, "empty strings are not forwarded");
        assert_eq!(value("missing"), None);
    }
}
