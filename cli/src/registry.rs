//! `weftctl filter push` and `weftctl filter ls`: filter modules to and from OCI registries.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use weft_registry::{Client, ClientOptions, Reference, RegistryHost, Repository};

/// How to reach the registry.
#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// Use plain http even for a registry that is not on this machine (loopback registries
    /// always use plain http).
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CA certificates trusted besides the system's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

impl Connection {
    fn client(&self) -> Client {
        Client::new(ClientOptions {
            plain_http: if self.plain_http { vec!["*".into()] } else { Vec::new() },
            ca_file: self.ca_file.clone(),
            ..ClientOptions::default()
        })
    }
}

/// `weftctl filter push FILE REFERENCE`.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The module: a `.wasm` file.
    file: PathBuf,
    /// Where to push it: oci://HOST[:PORT]/REPOSITORY[:TAG] (the tag defaults to `latest`).
    reference: String,
    #[command(flatten)]
    connection: Connection,
}

/// `weftctl filter ls REGISTRY`.
#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// The registry: oci://HOST[:PORT] or HOST[:PORT].
    registry: String,
    #[command(flatten)]
    connection: Connection,
}

/// Pushes the module; prints the reference pinned by digest and the module's sha256 (a
/// module's `url` and `sha256`).
pub(crate) fn push(args: &PushArgs) -> anyhow::Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let module = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let client = args.connection.client();
    let pushed = runtime()?
        .block_on(client.push_module(&reference, &module))
        .with_context(|| format!("pushing {} to {reference}", args.file.display()))?;
    println!(
        "pushed {reference}\nurl    {}\nsha256 {}",
        pushed.reference, pushed.module_sha256
    );
    Ok(())
}

/// Prints a table of the registry's repositories, tags and digests.
pub(crate) fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let registry = RegistryHost::parse(&args.registry)?;
    let client = args.connection.client();
    let repositories = runtime()?
        .block_on(client.list(&registry))
        .with_context(|| format!("listing {registry}"))?;
    print!("{}", table(&repositories));
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `REPOSITORY TAG DIGEST` rows, aligned; a repository without tags shows `-`.
fn table(repositories: &[Repository]) -> String {
    let mut rows = vec![["REPOSITORY".to_owned(), "TAG".to_owned(), "DIGEST".to_owned()]];
    for repository in repositories {
        if repository.tags.is_empty() {
            rows.push([repository.name.clone(), "-".into(), "-".into()]);
        }
        for tag in &repository.tags {
            rows.push([repository.name.clone(), tag.name.clone(), tag.digest.to_string()]);
        }
    }
    let width = |column: usize| rows.iter().map(|row| row[column].len()).max().unwrap_or(0);
    let (repository_width, tag_width) = (width(0), width(1));
    let mut out = String::new();
    for [repository, tag, digest] in &rows {
        let _ = writeln!(out, "{repository:repository_width$}  {tag:tag_width$}  {digest}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_registry::{Digest, Tag};

    #[test]
    fn tables_align_their_columns() {
        let digest = Digest::of(b"x");
        let repositories = vec![
            Repository {
                name: "weft/router".into(),
                tags: vec![
                    Tag {
                        name: "latest".into(),
                        digest: digest.clone(),
                    },
                    Tag {
                        name: "v1".into(),
                        digest: digest.clone(),
                    },
                ],
            },
            Repository {
                name: "x".into(),
                tags: Vec::new(),
            },
        ];
        assert_eq!(
            table(&repositories),
            format!(
                "REPOSITORY   TAG     DIGEST\n\
                 weft/router  latest  {digest}\n\
                 weft/router  v1      {digest}\n\
                 x            -       -\n"
            )
        );
    }
}
