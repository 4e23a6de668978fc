//! What a filter module can do, so the request path skips the work a filter cannot use: the
//! phases it does not implement, the request copy kept for retries it never asks for, the
//! callout handle of a filter that makes no callouts.
//!
//! Two sources, combined:
//!
//! - **Inferred** from the module's imports and exports. Filters built with the Rust SDK
//!   import and export (nearly) everything whatever they use, so for them every answer is
//!   yes.
//! - **Declared** in a custom section named [`SECTION`]: the names of the capabilities the
//!   filter uses, separated by spaces or commas (`request_headers log properties`). A module
//!   with the section gets only what it declares (and can); one without it gets everything it
//!   can. A name the host does not know refuses the module, so a typo cannot silently switch
//!   a phase off. `weft_sdk::filter!` writes the section from its `capabilities` list.

/// The custom section a filter declares its capabilities in.
pub(crate) const SECTION: &str = "weft.capabilities";

/// The names a declaration may use, in the order of [`Capabilities`]' fields (`weft-sdk`'s
/// `capabilities!` checks the same list at compile time).
const NAMES: [&str; 8] = [
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "log",
    "callouts",
    "retry",
    "properties",
];

/// What a filter module can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Capabilities {
    /// `proxy_on_request_headers` is called.
    pub(crate) request_headers: bool,
    /// `proxy_on_request_body` is called (and request bodies are wrapped for it).
    pub(crate) request_body: bool,
    /// `proxy_on_response_headers` is called.
    pub(crate) response_headers: bool,
    /// `proxy_on_response_body` is called (and response bodies are wrapped for it).
    pub(crate) response_body: bool,
    /// `proxy_on_log` is called when the stream ends (`proxy_on_done` and
    /// `proxy_on_delete` always are, for a stream context that was created).
    pub(crate) log: bool,
    /// Callouts (`proxy_http_call`, `proxy_grpc_call`): requests carry a callout handle.
    pub(crate) callouts: bool,
    /// `weft.retry`: requests keep a copy of their head and (bounded) body to send again.
    pub(crate) retry: bool,
    /// `proxy_get_property` / `proxy_set_property`.
    pub(crate) properties: bool,
}

impl Capabilities {
    /// Every capability.
    pub(crate) const ALL: Self = Self {
        request_headers: true,
        request_body: true,
        response_headers: true,
        response_body: true,
        log: true,
        callouts: true,
        retry: true,
        properties: true,
    };

    fn fields(&mut self) -> [&mut bool; 8] {
        [
            &mut self.request_headers,
            &mut self.request_body,
            &mut self.response_headers,
            &mut self.response_body,
            &mut self.log,
            &mut self.callouts,
            &mut self.retry,
            &mut self.properties,
        ]
    }

    /// What a module's imports and exports allow.
    pub(crate) fn inferred(module: &wasmtime::Module) -> Self {
        let imports = || module.imports().filter(|i| i.module() == "env").map(|i| i.name());
        let imported = |names: &[&str]| imports().any(|n| names.contains(&n));
        let exported = |name: &str| module.exports().any(|e| e.name() == name);
        Self {
            request_headers: exported("proxy_on_request_headers"),
            request_body: exported("proxy_on_request_body"),
            response_headers: exported("proxy_on_response_headers"),
            response_body: exported("proxy_on_response_body"),
            log: exported("proxy_on_log"),
            callouts: imported(&["proxy_http_call", "proxy_dispatch_http_call", "proxy_grpc_call"]),
            retry: imported(&["proxy_call_foreign_function"]),
            properties: imported(&["proxy_get_property", "proxy_set_property"]),
        }
    }

    /// Only what both allow.
    pub(crate) fn and(mut self, mut other: Self) -> Self {
        for (mine, theirs) in self.fields().into_iter().zip(other.fields()) {
            *mine &= *theirs;
        }
        self
    }

    /// Parses a declaration: names separated by spaces or commas.
    pub(crate) fn parse(text: &[u8]) -> Result<Self, DeclarationError> {
        let text = std::str::from_utf8(text).map_err(|_| DeclarationError::NotUtf8)?;
        let mut declared = Self::default();
        for name in text.split([' ', ',', '\n', '\t', '\r']).filter(|n| !n.is_empty()) {
            let Some(i) = NAMES.iter().position(|known| *known == name) else {
                return Err(DeclarationError::Unknown(name.to_owned()));
            };
            *declared.fields()[i] = true;
        }
        Ok(declared)
    }

    /// The declaration in a module's bytes: every [`SECTION`] custom section, together.
    /// `None` when there is none.
    pub(crate) fn declared(module: &[u8]) -> Result<Option<Self>, DeclarationError> {
        let mut text: Option<Vec<u8>> = None;
        for (name, payload) in custom_sections(module) {
            if name == SECTION.as_bytes() {
                let text = text.get_or_insert_with(Vec::new);
                text.extend_from_slice(payload);
                text.push(b' ');
            }
        }
        text.map(|t| Self::parse(&t)).transpose()
    }
}

/// A declaration the host cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeclarationError {
    /// The section is not UTF-8.
    #[error("custom section {SECTION} is not UTF-8")]
    NotUtf8,
    /// A name the host does not know.
    #[error("custom section {SECTION}: unknown capability {0:?} (known: {known})", known = NAMES.join(", "))]
    Unknown(String),
}

/// The custom sections of a Wasm binary, as (name, payload). Stops at the first malformed
/// section header (the module then fails to compile anyway).
fn custom_sections(module: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    /// An unsigned LEB128 `u32` at `bytes[*at..]`, advancing `at`.
    fn leb(bytes: &[u8], at: &mut usize) -> Option<usize> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return usize::try_from(value).ok();
            }
        }
        None
    }
    // Past the magic number and version.
    let mut at = 8;
    std::iter::from_fn(move || {
        loop {
            let id = *module.get(at)?;
            at += 1;
            let size = leb(module, &mut at)?;
            let section = module.get(at..at.checked_add(size)?)?;
            at += size;
            if id != 0 {
                continue;
            }
            let mut inner = 0;
            let name_len = leb(section, &mut inner)?;
            let name = section.get(inner..inner.checked_add(name_len)?)?;
            return Some((name, &section[inner + name_len..]));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_names_what_the_filter_uses() {
        let declared = Capabilities::parse(b"request_headers, log\nproperties").expect("parses");
        assert_eq!(
            declared,
            Capabilities {
                request_headers: true,
                log: true,
                properties: true,
                request_body: false,
                response_headers: false,
                response_body: false,
                callouts: false,
                retry: false,
            }
        );
        assert_eq!(
            Capabilities::parse(b"request_headers retyr"),
            Err(DeclarationError::Unknown("retyr".to_owned()))
        );
        assert!(
            Capabilities::parse(b"request_headers retyr")
                .expect_err("unknown")
                .to_string()
                .contains("known: request_headers, request_body")
        );
        assert_eq!(Capabilities::parse(b"\xff"), Err(DeclarationError::NotUtf8));
        // An empty declaration is a filter that needs no phase at all.
        assert_eq!(
            Capabilities::parse(b"").expect("parses").and(Capabilities::ALL),
            Capabilities::parse(b" , ").expect("parses")
        );
    }

    #[test]
    fn the_declaration_is_read_from_every_custom_section_of_its_name() {
        let wat = r#"(module
            (@custom "weft.capabilities" "request_headers")
            (@custom "other" "retry")
            (memory 1)
            (@custom "weft.capabilities" (after data) "log"))"#;
        let bytes = wat::parse_str(wat).expect("valid wat");
        let declared = Capabilities::declared(&bytes).expect("valid").expect("declared");
        assert!(declared.request_headers && declared.log, "{declared:?}");
        assert!(!declared.retry && !declared.response_body, "{declared:?}");

        let none = wat::parse_str("(module (@custom \"other\" \"x\"))").expect("valid wat");
        assert_eq!(Capabilities::declared(&none), Ok(None));
        // Truncated bytes end the scan without a panic.
        for end in 0..bytes.len() {
            let _ = Capabilities::declared(&bytes[..end]);
        }
    }
}
