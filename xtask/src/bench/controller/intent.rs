//! The generated intent: Services with their Workloads, DestinationRules and VirtualServices
//! written as YAML files for the controller's file source, and the edits of the rounds.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weft_api::pb;

/// A generated intent directory: `services/NNNN.yaml` (Services, their Workloads and
/// DestinationRules) and `virtualservices/NNNN.yaml`, `per_file` services a file.
pub(super) struct Intent {
    pub(super) dir: PathBuf,
    services: usize,
    workloads: usize,
    per_file: usize,
    /// The `v1` weight of each service's VirtualService (`v2` gets the rest of 100).
    weights: Vec<u32>,
}

/// One generated Workload, as its sidecar presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WorkloadNode {
    pub(super) name: String,
    service_account: String,
    labels: Vec<(String, String)>,
}

impl WorkloadNode {
    /// The node of the config stream's first request.
    pub(super) fn node(&self) -> pb::Node {
        pb::Node {
            id: self.name.clone(),
            namespace: "default".to_owned(),
            service_account: self.service_account.clone(),
            labels: self.labels.iter().cloned().collect(),
            proxy_version: "bench-sidecar".to_owned(),
            ..Default::default()
        }
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

impl Intent {
    /// Writes the intent into `dir`.
    pub(super) fn create(dir: &Path, services: usize, workloads: usize, per_file: usize) -> anyhow::Result<Self> {
        let intent = Self {
            dir: dir.to_owned(),
            services,
            workloads,
            per_file: per_file.max(1),
            weights: vec![50; services],
        };
        for sub in ["services", "virtualservices"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        for file in 0..services.div_ceil(intent.per_file) {
            let range = file * intent.per_file..((file + 1) * intent.per_file).min(services);
            let mut text = String::new();
            for i in range {
                intent.service_yaml(i, &mut text);
            }
            write_file(&dir.join("services").join(format!("{file:04}.yaml")), &text)?;
            intent.write_virtual_services(file)?;
        }
        Ok(intent)
    }

    /// Every workload, in order.
    pub(super) fn workloads(&self) -> Vec<WorkloadNode> {
        (0..self.services)
            .flat_map(|i| (0..self.workloads).map(move |j| (i, j)))
            .map(|(i, j)| self.workload(i, j))
            .collect()
    }

    /// Workload `j` of service `i`: the first half `version: v1`, the rest `v2`.
    pub(super) fn workload(&self, i: usize, j: usize) -> WorkloadNode {
        let version = if j < self.workloads.div_ceil(2) { "v1" } else { "v2" };
        WorkloadNode {
            name: format!("{}-{j}", service_name(i)),
            service_account: service_name(i),
            labels: vec![
                ("app".to_owned(), service_name(i)),
                ("version".to_owned(), version.to_owned()),
            ],
        }
    }

    /// Where workload number `k` lives: `(address, app port, inbound, outbound)`. On
    /// 127.0.0.1 with distinct ports while they fit, else spread over 10.0.0.0/8 with the
    /// same ports.
    fn placement(&self, k: usize) -> (String, u16, u16, u16) {
        let total = self.services * self.workloads;
        if total <= 10_000 {
            let k = k as u16;
            ("127.0.0.1".to_owned(), 20_000 + k, 30_000 + k, 40_000 + k)
        } else {
            let ip = format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255);
            (ip, 8080, 15006, 15001)
        }
    }

    fn service_yaml(&self, i: usize, out: &mut String) {
        let name = service_name(i);
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: default }}\nspec:\n  \
             selector: {{ app: {name} }}\n  ports: [{{ name: http, port: 8080, targetPort: http }}]\n---\n"
        );
        for j in 0..self.workloads {
            let workload = self.workload(i, j);
            let (address, app, inbound, outbound) = self.placement(i * self.workloads + j);
            let labels: Vec<String> = workload.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = write!(
                out,
                "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {{ name: {}, namespace: default, labels: {{ {} }} }}\n\
                 spec:\n  address: {address}\n  serviceAccount: {}\n  ports: {{ http: {app} }}\n  \
                 sidecar: {{ inbound: {inbound}, outbound: {outbound} }}\n---\n",
                workload.name,
                labels.join(", "),
                workload.service_account,
            );
        }
        let _ = write!(
            out,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: {name}, namespace: default }}\n\
             spec:\n  host: {name}\n  subsets:\n    - {{ name: v1, labels: {{ version: v1 }} }}\n    \
             - {{ name: v2, labels: {{ version: v2 }} }}\n---\n"
        );
    }

    fn virtual_service_yaml(&self, i: usize, out: &mut String) {
        let name = service_name(i);
        let v1 = self.weights[i];
        let _ = write!(
            out,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: {name}, namespace: default }}\n\
             spec:\n  hosts: [{name}]\n  http:\n    - route:\n        \
             - {{ destination: {{ host: {name}, subset: v1 }}, weight: {v1} }}\n        \
             - {{ destination: {{ host: {name}, subset: v2 }}, weight: {} }}\n---\n",
            100 - v1
        );
    }

    /// The VirtualService file holding `file`'s services.
    fn virtual_services_path(&self, file: usize) -> PathBuf {
        self.dir.join("virtualservices").join(format!("{file:04}.yaml"))
    }

    fn write_virtual_services(&self, file: usize) -> anyhow::Result<()> {
        let mut text = String::new();
        for i in file * self.per_file..((file + 1) * self.per_file).min(self.services) {
            self.virtual_service_yaml(i, &mut text);
        }
        write_file(&self.virtual_services_path(file), &text)
    }

    /// Shifts service `i`'s weights by 10 points (v1 from 50 to 60, …, 90 to 10) and
    /// rewrites its file; returns a description of the edit. Only the write itself happens
    /// after the text is ready.
    pub(super) fn edit(&mut self, i: usize) -> anyhow::Result<String> {
        let i = i % self.services;
        let old = self.weights[i];
        let new = if old >= 90 { 10 } else { old + 10 };
        self.weights[i] = new;
        let file = i / self.per_file;
        self.write_virtual_services(file)?;
        Ok(format!(
            "{}: v1/v2 {old}/{} → {new}/{}",
            service_name(i),
            100 - old,
            100 - new
        ))
    }
}

pub(super) fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::Intent;

    #[test]
    fn intent_edits_one_file() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("weft-bench-controller-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut intent = Intent::create(&dir, 3, 4, 2)?;
        let workloads = intent.workloads();
        assert_eq!(workloads.len(), 12);
        assert_eq!(workloads[5].name, "svc-00001-1");
        assert_eq!(workloads[6].labels[1], ("version".to_owned(), "v2".to_owned()));
        let services = fs::read_to_string(dir.join("services/0000.yaml"))?;
        assert_eq!(services.matches("kind: Workload").count(), 8);
        assert!(services.contains("sidecar: { inbound: 30005, outbound: 40005 }"));
        assert_eq!(intent.edit(2)?, "svc-00002: v1/v2 50/50 → 60/40");
        let edited = fs::read_to_string(dir.join("virtualservices/0001.yaml"))?;
        assert!(edited.contains("subset: v1 }, weight: 60 }") && edited.contains("subset: v2 }, weight: 40 }"));
        assert!(fs::read_to_string(dir.join("virtualservices/0000.yaml"))?.contains("weight: 50"));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
