//! What the demo runs and where: the six Bookinfo instances (each an application and its
//! sidecar), Istio's ingress gateway and the controller, on fixed ports (the interactive
//! demo) or on free ones (`--free-ports`, `--smoke`). The ports reach the intent through the
//! `${PLACEHOLDER}`s of `examples/bookinfo/platform/*.yaml` (see [`Layout::vars`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// The namespace of every Bookinfo workload (Istio's samples leave it out: `default`).
pub(super) const NAMESPACE: &str = "default";

/// One Bookinfo instance: a Workload of `workloads.yaml`, the `bookinfo` service running it
/// and its sidecar.
#[derive(Debug)]
pub(super) struct Instance {
    /// The Workload's name (Istio's Deployment name), which its sidecar presents as node id.
    pub(super) workload: &'static str,
    /// The `bookinfo` subcommand, and the Workload's `app` label.
    pub(super) app: &'static str,
    /// The Workload's `version` label (and `bookinfo reviews --version`).
    pub(super) version: &'static str,
    /// Its service account: the SPIFFE identity its sidecar gets.
    pub(super) service_account: &'static str,
    /// Prefix of its placeholders: `${<VAR>_APP}`, `${<VAR>_INBOUND}`, `${<VAR>_OUTBOUND}`.
    var: &'static str,
    /// Its ports in the interactive demo.
    fixed: Ports,
}

/// The ports of one instance.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ports {
    /// The application (`bookinfo --listen 127.0.0.1:<app>`).
    pub(super) app: u16,
    /// The sidecar's admin API (`/stats/prometheus`, `/certs`, `/config_dump`).
    pub(super) admin: u16,
    /// The sidecar's outbound listener: the application's `--proxy`.
    pub(super) outbound: u16,
    /// The sidecar's inbound listener: where peers reach the workload, with mutual TLS.
    pub(super) inbound: u16,
}

/// Shorthand for the fixed ports table below.
const fn ports(app: u16, sidecar: u16) -> Ports {
    Ports {
        app,
        admin: sidecar,
        outbound: sidecar + 1,
        inbound: sidecar + 6,
    }
}

/// The instances of Istio's `bookinfo.yaml`. Sidecars take Istio's ports (admin `15000`,
/// outbound `15001`, inbound `15006`) shifted by 100 per instance; applications listen on
/// 9081–9086 (each Service's port, 9080, is virtual).
pub(super) const INSTANCES: [Instance; 6] = [
    Instance {
        workload: "productpage-v1",
        app: "productpage",
        version: "v1",
        service_account: "bookinfo-productpage",
        var: "PRODUCTPAGE_V1",
        fixed: ports(9081, 15000),
    },
    Instance {
        workload: "details-v1",
        app: "details",
        version: "v1",
        service_account: "bookinfo-details",
        var: "DETAILS_V1",
        fixed: ports(9082, 15100),
    },
    Instance {
        workload: "ratings-v1",
        app: "ratings",
        version: "v1",
        service_account: "bookinfo-ratings",
        var: "RATINGS_V1",
        fixed: ports(9083, 15200),
    },
    Instance {
        workload: "reviews-v1",
        app: "reviews",
        version: "v1",
        service_account: "bookinfo-reviews",
        var: "REVIEWS_V1",
        fixed: ports(9084, 15300),
    },
    Instance {
        workload: "reviews-v2",
        app: "reviews",
        version: "v2",
        service_account: "bookinfo-reviews",
        var: "REVIEWS_V2",
        fixed: ports(9085, 15400),
    },
    Instance {
        workload: "reviews-v3",
        app: "reviews",
        version: "v3",
        service_account: "bookinfo-reviews",
        var: "REVIEWS_V3",
        fixed: ports(9086, 15500),
    },
];

/// The ingress gateway's Workload (in `workloads.yaml`): its node id.
pub(super) const GATEWAY: &str = "istio-ingressgateway";
/// The ingress gateway's namespace.
pub(super) const GATEWAY_NAMESPACE: &str = "istio-system";
/// The ingress gateway's service account.
pub(super) const GATEWAY_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";
/// The ingress gateway's labels (`istio: ingressgateway` is what `bookinfo-gateway.yaml`
/// selects).
pub(super) const GATEWAY_LABELS: [&str; 2] = ["app=istio-ingressgateway", "istio=ingressgateway"];
/// The port of `bookinfo-gateway.yaml`'s server: the gateway listens on `<address>:8080`.
pub(super) const GATEWAY_PORT: u16 = 8080;

/// The controller's gRPC port (config stream, status, certificates) in the interactive demo.
const CONTROLLER_PORT: u16 = 15010;
/// The embedded registry's port in the interactive demo.
const REGISTRY_PORT: u16 = 15012;
/// The gateway's admin port in the interactive demo.
const GATEWAY_ADMIN_PORT: u16 = 15600;

/// Every address of one run of the demo.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// The controller's gRPC port on 127.0.0.1.
    pub(super) grpc: u16,
    /// The embedded OCI registry's port on 127.0.0.1.
    pub(super) registry: u16,
    /// Each instance with its ports, in [`INSTANCES`] order.
    pub(super) instances: Vec<(&'static Instance, Ports)>,
    /// The gateway Workload's address: its listener is `<address>:8080`.
    pub(super) gateway_address: Ipv4Addr,
    /// The gateway's admin port on 127.0.0.1.
    pub(super) gateway_admin: u16,
}

impl Layout {
    /// The interactive demo's ports: the product page at `http://127.0.0.1:8080/productpage`.
    pub(super) fn fixed() -> Self {
        Self {
            grpc: CONTROLLER_PORT,
            registry: REGISTRY_PORT,
            instances: INSTANCES.iter().map(|i| (i, i.fixed)).collect(),
            gateway_address: Ipv4Addr::LOCALHOST,
            gateway_admin: GATEWAY_ADMIN_PORT,
        }
    }

    /// Free ports on 127.0.0.1, and for the gateway (whose port, 8080, the Gateway manifest
    /// fixes) a random loopback address where port 8080 is free.
    pub(super) fn free() -> Result<Self> {
        let mut instances = Vec::new();
        for instance in &INSTANCES {
            let ports = Ports {
                app: free_port()?,
                admin: free_port()?,
                outbound: free_port()?,
                inbound: free_port()?,
            };
            instances.push((instance, ports));
        }
        Ok(Self {
            grpc: free_port()?,
            registry: free_port()?,
            instances,
            gateway_address: free_gateway_address()?,
            gateway_admin: free_port()?,
        })
    }

    /// Fails, naming the port, when one of the layout's ports is taken (another demo still
    /// running, or anything else).
    pub(super) fn check_free(&self) -> Result<()> {
        let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut addresses = vec![
            localhost(self.grpc),
            localhost(self.registry),
            localhost(self.gateway_admin),
            SocketAddr::from((self.gateway_address, GATEWAY_PORT)),
        ];
        for (_, ports) in &self.instances {
            addresses.extend([ports.app, ports.admin, ports.outbound, ports.inbound].map(localhost));
        }
        for address in addresses {
            if let Err(error) = TcpListener::bind(address) {
                bail!(
                    "{address} is not free ({error}); is another demo running? \
                     (`ss -ltnp 'sport = :{}'` shows who holds it; `--free-ports` avoids it)",
                    address.port()
                );
            }
        }
        Ok(())
    }

    /// The ports of the instance whose Workload is `workload`.
    pub(super) fn ports(&self, workload: &str) -> Option<Ports> {
        self.instances
            .iter()
            .find(|(i, _)| i.workload == workload)
            .map(|(_, ports)| *ports)
    }

    /// The gateway's listener.
    pub(super) fn gateway(&self) -> SocketAddr {
        SocketAddr::from((self.gateway_address, GATEWAY_PORT))
    }

    /// `http://<gateway>`: the base URL of the application.
    pub(super) fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway())
    }

    /// The values of the platform templates' placeholders.
    pub(super) fn vars(&self, filters_dir: &Path) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        vars.insert("FILTERS_DIR".to_owned(), filters_dir.display().to_string());
        vars.insert("GATEWAY_ADDRESS".to_owned(), self.gateway_address.to_string());
        for (instance, ports) in &self.instances {
            vars.insert(format!("{}_APP", instance.var), ports.app.to_string());
            vars.insert(format!("{}_INBOUND", instance.var), ports.inbound.to_string());
            vars.insert(format!("{}_OUTBOUND", instance.var), ports.outbound.to_string());
        }
        vars
    }
}

/// Replaces every `${NAME}` in `template` by its value; an unknown name is an error.
pub(super) fn fill(template: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = out.find("${") {
        let rest = &out[at..];
        let placeholder = rest.find('}').map_or(rest, |end| &rest[..=end]);
        bail!("unknown placeholder {placeholder}");
    }
    Ok(out)
}

/// A pseudo-random number, different at each call (no `rand` in this crate).
fn random() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A port on 127.0.0.1 that is free now, taken below Linux's ephemeral range (32768 and
/// up), so that the outgoing connections of this machine cannot take it before a sidecar
/// binds it. Each call gives a different port.
pub(super) fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = u32::try_from(random() % u64::from(SPAN)).unwrap_or(0);
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(port).context("a port above 65535")?;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 between {FIRST} and {}", FIRST + SPAN)
}

/// A random address of 127.0.0.0/8 (not 127.0.0.x) whose port 8080 is free.
fn free_gateway_address() -> Result<Ipv4Addr> {
    for _ in 0..100 {
        let [a, b, c, ..] = random().to_le_bytes();
        let address = Ipv4Addr::new(127, a.max(1), b, c.clamp(1, 254));
        if TcpListener::bind((address, GATEWAY_PORT)).is_ok() {
            return Ok(address);
        }
    }
    bail!("no loopback address with port {GATEWAY_PORT} free (tried 100 in 127.0.0.0/8)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let layout = Layout::fixed();
        let vars = layout.vars(Path::new("/f"));
        assert_eq!(
            fill("a: ${REVIEWS_V2_INBOUND} ${GATEWAY_ADDRESS} ${FILTERS_DIR}", &vars).ok(),
            Some("a: 15406 127.0.0.1 /f".to_owned())
        );
        let error = fill("${NOPE} x", &vars).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("unknown placeholder ${NOPE}"));
    }

    #[test]
    fn the_platform_templates_have_only_known_placeholders() {
        let platform = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo/platform");
        let vars = Layout::fixed().vars(Path::new("/f"));
        for file in super::super::PLATFORM {
            let path = platform.join(file);
            let text = std::fs::read_to_string(&path).expect("template");
            if let Err(error) = fill(&text, &vars) {
                panic!("{}: {error}", path.display());
            }
        }
    }

    #[test]
    fn fixed_ports_are_distinct() {
        let layout = Layout::fixed();
        let mut ports = vec![layout.grpc, layout.registry, layout.gateway_admin, GATEWAY_PORT];
        for (_, p) in &layout.instances {
            ports.extend([p.app, p.admin, p.outbound, p.inbound]);
        }
        let count = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), count);
    }

    #[test]
    fn free_layouts_differ_and_stay_on_loopback() {
        let (a, b) = (Layout::free().expect("free"), Layout::free().expect("free"));
        assert_ne!(a.grpc, b.grpc);
        assert!(a.gateway_address.is_loopback() && a.gateway_address != Ipv4Addr::LOCALHOST);
    }
}
