//! `weftctl cert ls` and `weftctl cert revoke`: the controller CA's ledger of issued
//! certificates, and revocation by serial or by identity (sidecars refuse handshakes with a
//! revoked peer once the next snapshot reaches them).

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use weft_api::pb;

/// `weftctl cert revoke` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    /// A certificate's serial number, hex (as `weftctl cert ls` shows it).
    #[arg(long, conflicts_with = "identity", required_unless_present = "identity")]
    serial: Option<String>,
    /// An identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`. Every certificate
    /// carrying it is refused, including ones issued later.
    #[arg(long)]
    identity: Option<String>,
    /// The controller's gRPC address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    controller: String,
    /// The file holding the operator's token, which the controller writes to
    /// `<data-dir>/operator.token` (`weftctl demo`: `target/demo/controller/operator.token`).
    #[arg(long, value_name = "FILE", default_value = "weft-controller-data/operator.token")]
    token_file: std::path::PathBuf,
}

/// Prints the ledger of the controller at `address`.
pub(crate) fn ls(address: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ledger = runtime.block_on(async {
        let channel = crate::status::connect(address).await?;
        pb::certificates_client::CertificatesClient::new(channel)
            .list_certificates(pb::ListCertificatesRequest {})
            .await
            .context("listing certificates")
            .map(tonic::Response::into_inner)
    })?;
    print!("{}", render(&ledger, SystemTime::now()));
    Ok(())
}

/// Revokes what `args` names.
pub(crate) fn revoke(args: &RevokeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let request = pb::RevokeCertificateRequest {
        serial: args.serial.clone().unwrap_or_default(),
        spiffe_id: args.identity.clone().unwrap_or_default(),
    };
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the operator's token from {}", args.token_file.display()))?;
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim())
            .parse()
            .context("the operator's token is not ASCII")?,
    );
    let answer = runtime.block_on(async {
        let channel = crate::status::connect(&args.controller).await?;
        pb::certificates_client::CertificatesClient::new(channel)
            .revoke_certificate(request)
            .await
            .map_err(|status| anyhow::anyhow!("the controller refused: {}", status.message()))
            .map(tonic::Response::into_inner)
    })?;
    let what = match (&args.serial, &args.identity) {
        (Some(serial), _) => format!("serial {serial}"),
        (None, Some(identity)) => format!("identity {identity}"),
        (None, None) => String::new(),
    };
    println!(
        "revoked {what}: {} issued certificate(s) covered; sidecars refuse it from their next snapshot",
        answer.certificates
    );
    Ok(())
}

/// `3h 59m`, `42s`: a short duration.
fn short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

fn at(unix_ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0))
}

/// The table `weftctl cert ls` prints.
fn render(ledger: &pb::ListCertificatesResponse, now: SystemTime) -> String {
    let mut rows = vec![[
        "SERIAL".to_owned(),
        "IDENTITY".to_owned(),
        "WORKLOAD".to_owned(),
        "ISSUED".to_owned(),
        "EXPIRES".to_owned(),
        "STATE".to_owned(),
    ]];
    for cert in &ledger.certificates {
        let issued = now.duration_since(at(cert.issued_unix_ms)).unwrap_or_default();
        let expires = at(cert.not_after_unix_ms).duration_since(now).unwrap_or_default();
        rows.push([
            cert.serial.clone(),
            cert.spiffe_id.clone(),
            cert.workload.clone(),
            format!("{} ago", short(issued)),
            format!("in {}", short(expires)),
            if cert.revoked { "REVOKED" } else { "VALID" }.to_owned(),
        ]);
    }
    let mut out = crate::table::render(&rows);
    if !ledger.revoked_serials.is_empty() || !ledger.revoked_identities.is_empty() {
        out.push_str("\nrevoked:\n");
        for serial in &ledger.revoked_serials {
            out.push_str(&format!("  serial {serial}\n"));
        }
        for identity in &ledger.revoked_identities {
            out.push_str(&format!("  identity {identity}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_ledger() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |s: u64| i64::try_from(s * 1000).expect("ms");
        let ledger = pb::ListCertificatesResponse {
            certificates: vec![pb::IssuedCertificate {
                serial: "4f1a".into(),
                spiffe_id: "spiffe://cluster.local/ns/default/sa/reviews".into(),
                workload: "default/reviews-v1".into(),
                issued_unix_ms: ms(1_000_000 - 90),
                not_after_unix_ms: ms(1_000_000 + 86_000),
                revoked: true,
            }],
            revoked_serials: vec!["4f1a".into()],
            revoked_identities: vec![],
        };
        let text = render(&ledger, now);
        assert_eq!(
            text,
            "SERIAL  IDENTITY                                      WORKLOAD            ISSUED      EXPIRES     STATE\n\
             4f1a    spiffe://cluster.local/ns/default/sa/reviews  default/reviews-v1  1m 30s ago  in 23h 53m  REVOKED\n\
             \nrevoked:\n  serial 4f1a\n"
        );
    }
}
