//! Regular expressions in RE2 syntax, compiled once per VM with `regex-lite`: no look-around
//! or back-references (as RE2), matching in `O(pattern × value)` time, Perl classes (`\d`,
//! `\w`, `\s`) ASCII-only (as RE2). Unlike RE2: no Unicode classes (`\pL`), and `(?i)` folds
//! ASCII letters only. `regex-lite` keeps the module about 360 KiB smaller than `regex`.

use std::fmt;

/// Compiled size limit of one expression: bounds a VM's memory and, since matching is
/// proportional to it, the time one match may take (the host's call deadline is 20 ms).
const SIZE_LIMIT: usize = 64 * 1024;

/// A compiled regular expression.
#[derive(Clone)]
pub struct Pattern {
    regex: regex_lite::Regex,
    source: String,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Pattern {
    /// An expression the whole value must match (as Envoy's `safe_regex`, which Istio uses
    /// for `StringMatch.regex`).
    pub fn whole(source: &str) -> Result<Self, String> {
        // The source must stand on its own: `a)|(b` would otherwise escape the anchors.
        Self::build(source, source)?;
        Self::build(source, &format!(r"\A(?:{source})\z"))
    }

    /// An expression searched for anywhere in the value.
    pub fn search(source: &str) -> Result<Self, String> {
        Self::build(source, source)
    }

    fn build(source: &str, compiled: &str) -> Result<Self, String> {
        let regex = regex_lite::RegexBuilder::new(compiled)
            .size_limit(SIZE_LIMIT)
            .build()
            .map_err(|e| format!("invalid regex {source:?}: {e}"))?;
        Ok(Self {
            regex,
            source: source.to_owned(),
        })
    }

    /// Whether `value` matches (wholly, for [`Pattern::whole`]).
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    /// Replaces every non-overlapping match in `value` with `rewrite`, where `\0`..`\9` stand
    /// for the match's groups (Envoy's `regex_rewrite` substitution, RE2 syntax); `\\` is a
    /// backslash. A group that did not take part in the match is empty.
    pub fn replace_all(&self, value: &str, rewrite: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut last = 0;
        for captures in self.regex.captures_iter(value) {
            let Some(whole) = captures.get(0) else { continue };
            out.push_str(&value[last..whole.start()]);
            let mut chars = rewrite.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some(d) if d.is_ascii_digit() => {
                        let group = usize::from(d as u8 - b'0');
                        if let Some(m) = captures.get(group) {
                            out.push_str(m.as_str());
                        }
                    }
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            }
            last = whole.end();
        }
        out.push_str(&value[last..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_patterns_match_the_whole_value() {
        let p = Pattern::whole("/api/v[0-9]+").expect("valid");
        assert!(p.is_match("/api/v12"));
        assert!(!p.is_match("/api/v12/x"));
        assert!(!p.is_match("x/api/v1"));
        // Alternation stays inside the anchors.
        let p = Pattern::whole("a|b").expect("valid");
        assert!(p.is_match("a") && p.is_match("b") && !p.is_match("ab"));
        let p = Pattern::whole(r"\d+").expect("perl classes");
        assert!(p.is_match("123") && !p.is_match("12a"));
        let p = Pattern::whole("(?i)jason").expect("flags");
        assert!(p.is_match("JaSoN"));
        assert!(Pattern::whole("(").is_err());
        assert!(Pattern::whole("a)(").is_err(), "cannot escape the anchors");
        assert!(Pattern::whole("a)|(b").is_err(), "cannot escape the anchors");
        assert!(Pattern::whole("(?=a)").is_err(), "no look-around, as RE2");
        assert!(Pattern::whole(r"\pL").is_err(), "no Unicode classes");
        assert!(
            Pattern::whole(r"\w+").expect("ascii").is_match("a_1")
                && !Pattern::whole(r"\w").expect("ascii").is_match("é")
        );
    }

    #[test]
    fn replace_all_substitutes_groups() {
        let p = Pattern::search("^/service/([^/]+)(/.*)$").expect("valid");
        assert_eq!(
            p.replace_all("/service/foo/v1/api", r"\2/instance/\1"),
            "/v1/api/instance/foo"
        );
        let p = Pattern::search("o").expect("valid");
        assert_eq!(p.replace_all("/foo/boo", "0"), "/f00/b00");
        assert_eq!(p.replace_all("/x", "0"), "/x");
        let p = Pattern::search("(a)|(b)").expect("valid");
        assert_eq!(p.replace_all("ab", r"[\1\2\\\0]"), r"[a\a][b\b]");
    }
}
