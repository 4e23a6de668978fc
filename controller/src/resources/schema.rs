//! The field schema of every resource kind: which fields exist in the API, which of them Weft
//! supports, and a walker that checks a document against it before the typed parse.
//!
//! A field not in the schema is unknown (an error: the resource is refused); a field marked
//! [`Field::Unsupported`] is reported as a warning and removed, so the typed parse (which
//! denies unknown fields) only ever sees what the compiler implements.

use serde_yaml::Value;

/// The shape of a value.
pub(crate) enum Node {
    /// Anything (free-form configuration); not walked.
    Any,
    /// A scalar; its type is checked by the typed parse.
    Scalar,
    /// A mapping with these fields.
    Object(&'static [(&'static str, Field)]),
    /// A mapping with arbitrary keys and values of one shape.
    MapOf(&'static Node),
    /// A sequence of values of one shape.
    ListOf(&'static Node),
}

/// What Weft does with a field.
pub(crate) enum Field {
    /// Supported, with this shape.
    Known(&'static Node),
    /// In the API, not supported: a warning with this explanation, and the field is removed.
    Unsupported(&'static str),
    /// In the API, without meaning for the mesh (bookkeeping such as `metadata.uid`): removed
    /// silently.
    Ignored,
}

pub(crate) static SCALAR: Node = Node::Scalar;
pub(crate) static ANY: Node = Node::Any;
pub(crate) static SCALARS: Node = Node::ListOf(&SCALAR);
pub(crate) static SCALAR_MAP: Node = Node::MapOf(&SCALAR);

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Paths of fields not in the API.
    pub(crate) unknown: Vec<String>,
    /// Paths of unsupported fields, with the explanation.
    pub(crate) unsupported: Vec<(String, &'static str)>,
    /// Paths of values that are not of the expected shape (a list where a mapping belongs).
    pub(crate) malformed: Vec<(String, String)>,
}

/// Walks `value` (found at `path`) against `node`, removing unsupported and ignored fields.
pub(crate) fn walk(value: &mut Value, node: &Node, path: &str, findings: &mut Findings) {
    match (node, value) {
        (Node::Any | Node::Scalar, _) | (_, Value::Null) => {}
        (Node::Object(fields), Value::Mapping(map)) => {
            let mut remove = Vec::new();
            for (key, child) in map.iter_mut() {
                let Some(name) = key.as_str() else {
                    findings
                        .malformed
                        .push((path.to_owned(), format!("a key is not a string: {key:?}")));
                    continue;
                };
                let child_path = join(path, name);
                match fields.iter().find(|(field, _)| *field == name) {
                    None => findings.unknown.push(child_path),
                    Some((_, Field::Known(node))) => walk(child, node, &child_path, findings),
                    Some((_, Field::Unsupported(why))) => {
                        findings.unsupported.push((child_path, why));
                        remove.push(key.clone());
                    }
                    Some((_, Field::Ignored)) => remove.push(key.clone()),
                }
            }
            for key in remove {
                map.remove(&key);
            }
        }
        (Node::MapOf(node), Value::Mapping(map)) => {
            for (key, child) in map.iter_mut() {
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                walk(child, node, &join(path, &name), findings);
            }
        }
        (Node::ListOf(node), Value::Sequence(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, node, &format!("{path}[{i}]"), findings);
            }
        }
        (Node::Object(_) | Node::MapOf(_), other) => findings.malformed.push((
            path.to_owned(),
            format!("expected a mapping, found {}", describe(other)),
        )),
        (Node::ListOf(_), other) => findings
            .malformed
            .push((path.to_owned(), format!("expected a list, found {}", describe(other)))),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static INNER: Node = Node::Object(&[("a", Field::Known(&SCALAR)), ("b", Field::Unsupported("no b here"))]);
    static OUTER: Node = Node::Object(&[
        ("items", Field::Known(&Node::ListOf(&INNER))),
        ("free", Field::Known(&ANY)),
        ("uid", Field::Ignored),
    ]);

    #[test]
    fn unknown_unsupported_and_ignored_fields() {
        let mut value: Value =
            serde_yaml::from_str("items: [{a: 1, b: 2}, {a: 1, c: 3}]\nfree: {anything: [1]}\nuid: x\n").expect("yaml");
        let mut findings = Findings::default();
        walk(&mut value, &OUTER, "spec", &mut findings);
        assert_eq!(findings.unknown, vec!["spec.items[1].c".to_owned()]);
        assert_eq!(findings.unsupported, vec![("spec.items[0].b".to_owned(), "no b here")]);
        let expected: Value =
            serde_yaml::from_str("items: [{a: 1}, {a: 1, c: 3}]\nfree: {anything: [1]}\n").expect("yaml");
        assert_eq!(value, expected);
    }
}
