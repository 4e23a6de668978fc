//! Diagnostics: what the store refused and what the compiler could not honour, each naming
//! the resource, the field (`spec.http[0].route[0].destination.subset`) and the file it came
//! from. They are the status of the intent: nothing is dropped without one.

use std::fmt;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The resource (or the part of it named by the field) was refused, or traffic it
    /// describes is answered with an error (a 503 for a dangling destination).
    Error,
    /// The resource was applied without the named field or value, or with a documented
    /// approximation.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem with the intent.
///
/// Displayed as `VirtualService default/reviews (bookinfo/vs.yaml): spec.http[0]...: message`;
/// a problem with a whole document (it is not YAML, it has no kind) has an empty kind and is
/// displayed as `bookinfo/vs.yaml: document 2: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// The resource's kind (`VirtualService`); empty for a document that is not a resource.
    pub kind: String,
    /// The resource's namespace.
    pub namespace: String,
    /// The resource's name.
    pub name: String,
    /// Path of the field the problem is about (`spec.hosts[0]`); empty for the whole
    /// resource. For a document that is not a resource: `document <n>` (1-based).
    pub field: String,
    /// What is wrong, and what was done about it.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
    /// Where the resource came from (a file path relative to the intent directory).
    pub origin: String,
}

impl Diagnostic {
    /// An error about a field of a resource.
    pub fn error(resource: &ResourceRef<'_>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(resource, field, message, Severity::Error)
    }

    /// A warning about a field of a resource.
    pub fn warning(resource: &ResourceRef<'_>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(resource, field, message, Severity::Warning)
    }

    fn new(
        resource: &ResourceRef<'_>,
        field: impl Into<String>,
        message: impl Into<String>,
        severity: Severity,
    ) -> Self {
        Self {
            kind: resource.kind.to_owned(),
            namespace: resource.namespace.to_owned(),
            name: resource.name.to_owned(),
            field: field.into(),
            message: message.into(),
            severity,
            origin: resource.origin.to_owned(),
        }
    }

    /// An error about a whole document of a file (1-based `document`).
    pub fn document(origin: &str, document: usize, message: impl Into<String>) -> Self {
        Self {
            kind: String::new(),
            namespace: String::new(),
            name: String::new(),
            field: format!("document {document}"),
            message: message.into(),
            severity: Severity::Error,
            origin: origin.to_owned(),
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_empty() {
            write!(f, "{}: ", self.origin)?;
        } else {
            write!(f, "{} {}/{} ({}): ", self.kind, self.namespace, self.name, self.origin)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Names a resource for a diagnostic: kind, namespace, name and origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRef<'a> {
    /// The kind (`VirtualService`).
    pub kind: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The name.
    pub name: &'a str,
    /// The file it came from.
    pub origin: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_resource_file_and_field() {
        let vs = ResourceRef {
            kind: "VirtualService",
            namespace: "default",
            name: "reviews",
            origin: "bookinfo/vs.yaml",
        };
        let d = Diagnostic::error(
            &vs,
            "spec.http[0].route[0].destination.subset",
            "no subset \"v9\" in DestinationRule default/reviews",
        );
        assert_eq!(
            d.to_string(),
            "VirtualService default/reviews (bookinfo/vs.yaml): spec.http[0].route[0].destination.subset: \
             no subset \"v9\" in DestinationRule default/reviews"
        );
        let d = Diagnostic::document("a.yaml", 2, "not YAML");
        assert_eq!(d.to_string(), "a.yaml: document 2: not YAML");
        assert_eq!(d.severity.to_string(), "error");
    }
}
