//! The crate's one error type.

use std::time::Duration;

/// What went wrong, with where: the reference or url, the HTTP method and status, the digests
/// involved. [`Error::is_retryable`] tells a transient failure (network, timeout, 5xx, 429)
/// from one that will fail the same way again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image reference that does not parse.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A module url (or a url a registry sent back) that cannot be used.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The url.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("invalid digest {input:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest {
        /// The text given.
        input: String,
    },
    /// The TCP connection could not be made.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The url being fetched.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (unknown issuer, wrong name, protocol error).
    #[error("tls handshake for {url}: {source}")]
    Tls {
        /// The url being fetched.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS client could not be set up (an unreadable or empty CA file).
    #[error("tls setup: {reason}")]
    TlsSetup {
        /// What failed.
        reason: String,
    },
    /// The HTTP exchange failed (connection reset, malformed response).
    #[error("{method} {url}: {source}")]
    Http {
        /// The request's method.
        method: String,
        /// The request's url.
        url: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// No complete answer within the client's timeout.
    #[error("{method} {url}: no complete answer within {timeout:?}")]
    Timeout {
        /// The request's method.
        method: String,
        /// The request's url.
        url: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The registry asked for credentials (status 401); authentication is not supported yet.
    #[error("{method} {url}: the registry requires authentication (401, {challenge:?}), which is not supported yet")]
    Unauthorized {
        /// The request's method.
        method: String,
        /// The request's url.
        url: String,
        /// The `WWW-Authenticate` header, if any.
        challenge: String,
    },
    /// The server answered with an unexpected status.
    #[error("{method} {url}: status {status}{}", describe(code.as_deref(), message))]
    Status {
        /// The request's method.
        method: String,
        /// The request's url.
        url: String,
        /// The status code.
        status: u16,
        /// The registry's error code (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, ...), if it sent one.
        code: Option<String>,
        /// The registry's error message, or the start of the response body.
        message: String,
    },
    /// A manifest, blob or module larger than the client's limit.
    #[error("{what} from {url} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was being read.
        what: String,
        /// Where from.
        url: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Content whose digest is not the one it was asked for: a tampered or corrupt blob, a
    /// manifest that does not match a pinned reference, a module whose sha256 is not the
    /// expected one.
    #[error("{what} from {url}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Where it came from.
        url: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// A manifest that is not a single-module image manifest this crate understands.
    #[error("manifest from {url}: {reason}")]
    InvalidManifest {
        /// Where it came from.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image layer that holds no usable module (a compat tar without `plugin.wasm`, a
    /// corrupt gzip stream, an unsupported media type).
    #[error("image layer from {url}: {reason}")]
    InvalidImage {
        /// Where it came from.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes that are not a Wasm module (no `\0asm` header).
    #[error("{url}: not a Wasm module ({reason})")]
    InvalidModule {
        /// Where the bytes came from.
        url: String,
        /// What is wrong with them.
        reason: String,
    },
    /// Too many redirects in a row.
    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects {
        /// The url first asked for.
        url: String,
        /// The number of redirects followed.
        limit: usize,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn describe(code: Option<&str>, message: &str) -> String {
    match (code, message.is_empty()) {
        (Some(code), true) => format!(" ({code})"),
        (Some(code), false) => format!(" ({code}: {message})"),
        (None, true) => String::new(),
        (None, false) => format!(" ({message})"),
    }
}

impl Error {
    /// Whether trying again later may succeed: network failures, timeouts, 5xx and 429
    /// answers. Digest mismatches, invalid input and 4xx answers are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Tls { .. } | Self::Http { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether the registry said the manifest, blob, tag or repository does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 404, .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
