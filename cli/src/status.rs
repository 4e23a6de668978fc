//! `weftctl status`: every sidecar the controller knows, the version it runs and whether it
//! accepted the last one sent; then the problems found in the intent.

use std::time::Duration;

use anyhow::Context as _;
use weft_api::pb;

/// Prints the sidecar table and the intent diagnostics of the controller at `address`.
pub(crate) fn run(address: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (proxies, diagnostics) = runtime.block_on(fetch(address))?;
    print!("{}", render(&proxies, &diagnostics));
    Ok(())
}

/// The controller's sidecar table and the intent's diagnostics.
pub(crate) async fn fetch(address: &str) -> anyhow::Result<(pb::ListProxiesResponse, pb::ListDiagnosticsResponse)> {
    let channel = connect(address).await?;
    let mut client = pb::status_client::StatusClient::new(channel);
    let proxies = client
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .context("listing proxies")?
        .into_inner();
    let diagnostics = client
        .list_diagnostics(pb::ListDiagnosticsRequest {})
        .await
        .context("listing diagnostics")?
        .into_inner();
    Ok((proxies, diagnostics))
}

/// A gRPC channel to the controller at `address` (`host:port`, or a URL).
pub(crate) async fn connect(address: &str) -> anyhow::Result<tonic::transport::Channel> {
    let address = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    tonic::transport::Endpoint::from_shared(address.clone())
        .with_context(|| format!("bad controller address {address}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach the controller at {address}"))
}

/// The table `weftctl status` prints.
fn render(proxies: &pb::ListProxiesResponse, diagnostics: &pb::ListDiagnosticsResponse) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "NAMESPACE".to_owned(),
        "WORKLOAD".to_owned(),
        "SENT".to_owned(),
        "ACKED".to_owned(),
        "STATE".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    for proxy in &proxies.proxies {
        let (name, namespace) = proxy
            .node
            .as_ref()
            .map_or_else(Default::default, |n| (n.id.clone(), n.namespace.clone()));
        let state = match pb::SyncState::try_from(proxy.state) {
            Ok(pb::SyncState::Synced) => "SYNCED",
            Ok(pb::SyncState::Nacked) => "NACKED",
            Ok(pb::SyncState::Stale) => "STALE",
            Ok(pb::SyncState::NotSent) | Err(_) => "NOT SENT",
        };
        let state = if proxy.connected {
            state.to_owned()
        } else {
            format!("{state} (disconnected)")
        };
        let or_dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
        rows.push([
            name,
            namespace,
            or_dash(&proxy.workload),
            or_dash(&proxy.sent_version),
            or_dash(&proxy.acked_version),
            state,
            or_dash(&proxy.last_error.replace('\n', " ")),
        ]);
    }
    let mut out = crate::table::render(&rows);
    out.push_str(&format!(
        "\nintent version {}: {} sidecar(s), {} problem(s)\n",
        proxies.intent_version,
        proxies.proxies.len(),
        diagnostics.diagnostics.len()
    ));
    for d in &diagnostics.diagnostics {
        let field = if d.field.is_empty() {
            String::new()
        } else {
            format!(" {}:", d.field)
        };
        out.push_str(&format!(
            "{} {} {}/{} ({}):{} {}\n",
            d.severity, d.kind, d.namespace, d.name, d.origin, field, d.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_table_and_diagnostics() {
        let proxies = pb::ListProxiesResponse {
            proxies: vec![pb::ProxyStatus {
                node: Some(pb::Node {
                    id: "reviews-v1".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                workload: "default/reviews-v1".into(),
                sent_version: "abc".into(),
                acked_version: "abd".into(),
                state: pb::SyncState::Nacked as i32,
                last_error: "filter \"x\": bad config".into(),
                connected: true,
                ..Default::default()
            }],
            intent_version: "1234".into(),
        };
        let diagnostics = pb::ListDiagnosticsResponse {
            diagnostics: vec![pb::Diagnostic {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: "reviews".into(),
                field: "spec.http[0].route[0].destination.subset".into(),
                message: "no subset \"v9\"".into(),
                severity: "error".into(),
                origin: "vs.yaml".into(),
            }],
        };
        let text = render(&proxies, &diagnostics);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].contains("reviews-v1") && lines[1].contains("NACKED"), "{text}");
        assert!(lines[1].ends_with("filter \"x\": bad config"), "{text}");
        assert!(text.contains("error VirtualService default/reviews (vs.yaml): spec.http[0].route[0].destination.subset: no subset \"v9\""), "{text}");
    }
}
