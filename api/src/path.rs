//! Field paths for error messages (`listeners[0].filters[2].config_json`), built on the stack
//! while converting or validating and formatted only when there is an error to report.

use std::fmt;

/// The path of a field, relative to the snapshot.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    /// The snapshot itself.
    Root,
    /// A field of the parent.
    Field(&'a Path<'a>, &'static str),
    /// An element of a repeated field of the parent.
    Index(&'a Path<'a>, &'static str, usize),
}

impl Path<'_> {
    /// The field `name` of this one.
    pub(crate) fn field(&self, name: &'static str) -> Path<'_> {
        Path::Field(self, name)
    }

    /// Element `index` of this one's repeated field `name`.
    pub(crate) fn index(&self, name: &'static str, index: usize) -> Path<'_> {
        Path::Index(self, name, index)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (parent, name) = match self {
            Path::Root => return Ok(()),
            Path::Field(parent, name) | Path::Index(parent, name, _) => (parent, name),
        };
        if !matches!(parent, Path::Root) {
            write!(f, "{parent}.")?;
        }
        f.write_str(name)?;
        if let Path::Index(_, _, index) = self {
            write!(f, "[{index}]")?;
        }
        Ok(())
    }
}
