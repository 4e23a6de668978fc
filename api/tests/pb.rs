//! The wire format: domain → protobuf → bytes → protobuf → domain gives back the same
//! snapshot, unset wire fields mean the YAML defaults, and a bad wire snapshot is refused with
//! the path of the offending field.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use weft_api::{
    CircuitBreakers, Cluster, DirectResponse, Endpoint, FailurePolicy, FilterConfig, Forward, HashOn, HeaderMatch,
    HealthCheck, InvalidSnapshot, LbPolicy, Limits, Listener, ListenerKind, ListenerMtls, ListenerProtocol, LoadError,
    MtlsMode, OutlierDetection, PathMatch, Route, RouteMatch, RouteTable, Security, ServerTls, ServerTlsMode, Snapshot,
    SniDestination, SniRoute, TlsCertificate, UpstreamProtocol, UpstreamTls, UpstreamTlsMode, VirtualHost, WasmModule,
    pb,
};

/// Domain → wire → bytes → wire → domain.
fn round_trip(snapshot: &Snapshot) -> Result<Snapshot, InvalidSnapshot> {
    let bytes = pb::Snapshot::from(snapshot).encode_to_vec();
    let wire = pb::Snapshot::decode(bytes.as_slice()).expect("decodes what was encoded");
    Snapshot::try_from(wire)
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).expect("test YAML")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn sha(c: char) -> String {
    c.to_string().repeat(64)
}

fn endpoint(address: &str, version: &str, weight: u32) -> Endpoint {
    Endpoint {
        address: address.to_owned(),
        labels: labels(&[("version", version), ("zone", "a")]),
        weight,
        mesh: version == "v1",
    }
}

fn cluster(name: &str, lb_policy: LbPolicy, hash_on: Option<HashOn>, port: u16) -> Cluster {
    Cluster {
        name: name.to_owned(),
        protocol: UpstreamProtocol::Http2,
        endpoints: vec![
            endpoint(&format!("127.0.0.1:{port}"), "v1", 1),
            endpoint(&format!("[::1]:{}", port + 1), "v2", 7),
        ],
        lb_policy,
        hash_on,
        connect_timeout: Duration::from_millis(250),
        circuit_breakers: CircuitBreakers {
            max_connections: 10,
            max_pending_requests: 20,
            max_requests: 30,
        },
        health_check: None,
        outlier_detection: None,
        tls: None,
    }
}

fn route(name: &str, path: PathMatch, headers: Vec<HeaderMatch>) -> Route {
    Route {
        name: name.to_owned(),
        matches: RouteMatch {
            path: Some(path),
            headers,
        },
        forward: None,
        direct_response: None,
        disabled_filters: vec![],
    }
}

fn header(name: &str) -> HeaderMatch {
    HeaderMatch {
        name: name.to_owned(),
        exact: None,
        prefix: None,
        regex: None,
        invert: false,
    }
}

/// Every field set somewhere (every optional one too), every enum variant used, filter
/// configurations of every JSON shape. Struct literals without `..`: a new domain field does
/// not compile here until the wire format carries it.
fn full_snapshot() -> Snapshot {
    let filters = vec![
        FilterConfig {
            name: "mark".to_owned(),
            native: Some("headers".to_owned()),
            wasm: None,
            config: yaml("{ response_headers_add: { x-served-by: weft }, order: [3, 1, 2], ratio: 0.25, on: true }"),
            failure_policy: FailurePolicy::FailOpen,
        },
        FilterConfig {
            name: "telemetry".to_owned(),
            native: None,
            wasm: Some(WasmModule {
                file: "/var/lib/weft/telemetry.wasm".to_owned(),
                url: String::new(),
                sha256: sha('a'),
                vm_config: yaml("{ workers: 2, shared: [queue, data], nothing: null }"),
                root_id: "telemetry_root".to_owned(),
                vm_id: Some("shared-vm".to_owned()),
            }),
            // A string that looks like JSON stays a string.
            config: serde_yaml::Value::String("{\"reporter\": \"source\"}".to_owned()),
            failure_policy: FailurePolicy::FailClosed,
        },
        FilterConfig {
            name: "router".to_owned(),
            native: None,
            wasm: Some(WasmModule {
                file: String::new(),
                url: "oci://registry.example.com/weft/router@sha256:0123".to_owned(),
                sha256: sha('b'),
                vm_config: serde_yaml::Value::String("plain text".to_owned()),
                root_id: String::new(),
                vm_id: None,
            }),
            config: yaml("-42"),
            failure_policy: FailurePolicy::Reload,
        },
        FilterConfig {
            name: "list".to_owned(),
            native: Some("headers".to_owned()),
            wasm: None,
            config: yaml("[1, -2, 3.5, \"four\", [five], { six: 6 }, null, false, 18446744073709551615]"),
            failure_policy: FailurePolicy::FailOpen,
        },
        FilterConfig {
            name: "empty-string".to_owned(),
            native: Some("headers".to_owned()),
            wasm: None,
            config: serde_yaml::Value::String(String::new()),
            failure_policy: FailurePolicy::FailOpen,
        },
        FilterConfig {
            name: "number".to_owned(),
            native: Some("headers".to_owned()),
            wasm: None,
            config: yaml("1.0"),
            failure_policy: FailurePolicy::FailOpen,
        },
    ];
    let listeners = vec![
        Listener {
            name: "outbound".to_owned(),
            address: "127.0.0.1:15001".to_owned(),
            kind: ListenerKind::Outbound,
            protocol: ListenerProtocol::Auto,
            route_table: "main".to_owned(),
            filters,
            mtls: Some(ListenerMtls::default()),
            tls: None,
            sni_routes: vec![],
        },
        Listener {
            name: "inbound".to_owned(),
            address: "0.0.0.0:15006".to_owned(),
            kind: ListenerKind::Inbound,
            protocol: ListenerProtocol::Http1,
            route_table: "main".to_owned(),
            filters: vec![],
            mtls: Some(ListenerMtls {
                mode: MtlsMode::Strict,
                ports: BTreeMap::from([(9080, MtlsMode::Permissive), (9090, MtlsMode::Disable)]),
            }),
            tls: None,
            sni_routes: vec![],
        },
        Listener {
            name: "gateway".to_owned(),
            address: "[::]:0".to_owned(),
            kind: ListenerKind::Gateway,
            protocol: ListenerProtocol::Http2,
            route_table: "edge".to_owned(),
            filters: vec![],
            mtls: None,
            tls: Some(ServerTls {
                mode: ServerTlsMode::Mutual,
                certificates: vec![
                    TlsCertificate {
                        cert_chain: "chain-a".to_owned(),
                        private_key: "key-a".to_owned(),
                        server_names: vec!["bookinfo.example.com".to_owned(), "*.example.org".to_owned()],
                    },
                    TlsCertificate {
                        cert_chain: "chain-b".to_owned(),
                        private_key: "key-b".to_owned(),
                        server_names: vec![],
                    },
                ],
                client_ca: Some("ca".to_owned()),
            }),
            sni_routes: vec![],
        },
        Listener {
            name: "passthrough".to_owned(),
            address: "127.0.0.1:8443".to_owned(),
            kind: ListenerKind::Gateway,
            protocol: ListenerProtocol::TlsPassthrough,
            route_table: String::new(),
            filters: vec![],
            mtls: None,
            tls: None,
            sni_routes: vec![
                SniRoute {
                    server_names: vec!["db.example.com".to_owned(), "*.example.org".to_owned()],
                    destinations: vec![
                        SniDestination {
                            cluster: "reviews".to_owned(),
                            subset: labels(&[("version", "v2")]),
                            weight: 0,
                        },
                        SniDestination {
                            cluster: "ratings".to_owned(),
                            subset: BTreeMap::new(),
                            weight: 3,
                        },
                    ],
                },
                SniRoute {
                    server_names: vec!["*".to_owned()],
                    destinations: vec![SniDestination {
                        cluster: "reviews".to_owned(),
                        subset: BTreeMap::new(),
                        weight: 1,
                    }],
                },
            ],
        },
    ];

    let mut by_prefix = route(
        "by-prefix",
        PathMatch {
            exact: None,
            prefix: Some("/api/".to_owned()),
            regex: None,
        },
        vec![
            HeaderMatch {
                exact: Some("jason".to_owned()),
                invert: true,
                ..header("end-user")
            },
            HeaderMatch {
                prefix: Some("Mozilla".to_owned()),
                ..header("user-agent")
            },
            HeaderMatch {
                regex: Some("^v[0-9]+$".to_owned()),
                ..header("x-version")
            },
            header("x-present"),
        ],
    );
    by_prefix.forward = Some(Forward {
        cluster: "reviews".to_owned(),
        subset: labels(&[("version", "v2"), ("zone", "a")]),
        // Nanosecond precision survives.
        timeout: Some(Duration::new(2, 500_000_007)),
        prefix_rewrite: Some("/".to_owned()),
        host_rewrite: Some("reviews.internal:9080".to_owned()),
    });
    by_prefix.disabled_filters = vec!["mark".to_owned(), "router".to_owned()];

    let mut exact = route(
        "exact",
        PathMatch {
            exact: Some("/health".to_owned()),
            prefix: None,
            regex: None,
        },
        vec![],
    );
    exact.direct_response = Some(DirectResponse {
        status: 204,
        body: "ok\n".to_owned(),
        headers: labels(&[("cache-control", "no-store"), ("x-weft", "1")]),
    });

    let mut by_regex = route(
        "by-regex",
        PathMatch {
            exact: None,
            prefix: None,
            regex: Some("/ratings/[0-9]+".to_owned()),
        },
        vec![],
    );
    by_regex.forward = Some(Forward {
        cluster: "ratings".to_owned(),
        subset: BTreeMap::new(),
        timeout: None,
        prefix_rewrite: None,
        host_rewrite: None,
    });

    let catch_all = Route {
        name: String::new(),
        matches: RouteMatch::default(),
        forward: None,
        direct_response: Some(DirectResponse {
            status: 404,
            body: String::new(),
            headers: BTreeMap::new(),
        }),
        disabled_filters: vec![],
    };

    let mut reviews = cluster(
        "reviews",
        LbPolicy::RingHash,
        Some(HashOn {
            header: Some("x-user".to_owned()),
            cookie: None,
            source_ip: false,
        }),
        9080,
    );
    reviews.protocol = UpstreamProtocol::Http1;
    reviews.health_check = Some(HealthCheck {
        path: "/healthz".to_owned(),
        interval: Duration::from_micros(1500),
        timeout: Duration::from_nanos(999),
        healthy_threshold: 3,
        unhealthy_threshold: 4,
    });
    reviews.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: 0,
        consecutive_gateway_errors: 6,
        base_ejection_time: Duration::from_secs(90),
        max_ejection_percent: 0,
    });
    let sticky = cluster(
        "sticky",
        LbPolicy::RingHash,
        Some(HashOn {
            header: None,
            cookie: Some("session".to_owned()),
            source_ip: false,
        }),
        9090,
    );
    let by_client = cluster(
        "by-client",
        LbPolicy::RingHash,
        Some(HashOn {
            header: None,
            cookie: None,
            source_ip: true,
        }),
        9100,
    );

    Snapshot {
        version: "full-1".to_owned(),
        listeners,
        route_tables: vec![
            RouteTable {
                name: "main".to_owned(),
                virtual_hosts: vec![
                    VirtualHost {
                        name: "reviews".to_owned(),
                        domains: vec![
                            "reviews".to_owned(),
                            "reviews:9080".to_owned(),
                            "*.example.com".to_owned(),
                        ],
                        routes: vec![by_prefix, exact, by_regex],
                    },
                    VirtualHost {
                        name: "catch-all".to_owned(),
                        domains: vec!["*".to_owned()],
                        routes: vec![catch_all],
                    },
                ],
            },
            RouteTable {
                name: "edge".to_owned(),
                virtual_hosts: vec![],
            },
        ],
        clusters: vec![
            reviews,
            cluster("ratings", LbPolicy::LeastRequest, None, 9110),
            Cluster {
                tls: Some(UpstreamTls {
                    mode: UpstreamTlsMode::IstioMutual,
                    sni: None,
                    subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/random".to_owned()],
                    ca_certificates: None,
                    mesh_endpoints_only: true,
                    client_certificate: None,
                    private_key: None,
                }),
                ..cluster("random", LbPolicy::Random, None, 9120)
            },
            Cluster {
                tls: Some(UpstreamTls {
                    mode: UpstreamTlsMode::Simple,
                    sni: Some("plain.example.com".to_owned()),
                    subject_alt_names: vec![],
                    ca_certificates: Some("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n".to_owned()),
                    mesh_endpoints_only: false,
                    client_certificate: None,
                    private_key: None,
                }),
                ..cluster("plain", LbPolicy::RoundRobin, None, 9130)
            },
            Cluster {
                tls: Some(UpstreamTls {
                    mode: UpstreamTlsMode::Mutual,
                    sni: Some("partner.example.com".to_owned()),
                    subject_alt_names: vec!["api.partner.example.com".to_owned()],
                    ca_certificates: None,
                    mesh_endpoints_only: false,
                    client_certificate: Some("/etc/certs/client.pem".to_owned()),
                    private_key: Some("/etc/certs/client-key.pem".to_owned()),
                }),
                ..cluster("partner", LbPolicy::RoundRobin, None, 9140)
            },
            sticky,
            by_client,
        ]
        .into_iter()
        .map(std::sync::Arc::new)
        .collect(),
        limits: Limits {
            max_request_headers_bytes: 16 * 1024,
            max_request_headers_count: 50,
            max_request_body_bytes: Some(5_000_000_000),
            max_buffered_body_bytes: 64 * 1024,
            http2_max_concurrent_streams: 7,
        },
        security: Security {
            trust_bundle: vec!["-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".to_owned()],
            revoked_serials: vec!["7f01".to_owned()],
            revoked_identities: vec!["spiffe://cluster.local/ns/default/sa/old".to_owned()],
        },
    }
}

#[test]
fn a_full_snapshot_round_trips() {
    let snapshot = full_snapshot();
    snapshot.validate().expect("the fixture is valid");
    assert_eq!(round_trip(&snapshot).expect("round trip"), snapshot);
}

#[test]
fn zero_and_unset_stay_apart() {
    let mut snapshot = full_snapshot();
    snapshot.limits.max_request_body_bytes = Some(0);
    assert_eq!(round_trip(&snapshot).expect("Some(0)"), snapshot);
    snapshot.limits.max_request_body_bytes = None;
    assert_eq!(round_trip(&snapshot).expect("None"), snapshot);

    let wire = pb::Snapshot::from(&snapshot);
    assert_eq!(wire.limits.and_then(|l| l.max_request_body_bytes), None);
    let outlier = wire.clusters[0].outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(outlier.consecutive_5xx, Some(0), "0 disables, and is sent as such");
}

#[test]
fn configs_travel_as_json_text() {
    let wire = pb::Snapshot::from(&full_snapshot());
    let filters = &wire.listeners[0].filters;
    assert_eq!(
        filters[1].config_json, r#""{\"reporter\": \"source\"}""#,
        "a string is a JSON string"
    );
    assert_eq!(filters[2].config_json, "-42");
    assert_eq!(filters[4].config_json, r#""""#, "an empty string is not null");
    assert_eq!(
        filters[1].wasm.as_ref().map(|w| w.vm_config_json.as_str()),
        Some(r#"{"workers":2,"shared":["queue","data"],"nothing":null}"#),
        "map order is kept"
    );
    let no_config = pb::Snapshot::from(&Snapshot {
        listeners: vec![Listener {
            filters: vec![FilterConfig {
                config: serde_yaml::Value::Null,
                ..full_snapshot().listeners[0].filters[0].clone()
            }],
            ..full_snapshot().listeners[0].clone()
        }],
        ..Snapshot::default()
    });
    assert_eq!(no_config.listeners[0].filters[0].config_json, "", "null is empty");

    // What JSON cannot hold is written as JSON writes it: non-string keys as their text,
    // tags as a one-entry map.
    let odd = pb::Snapshot::from(&Snapshot {
        listeners: vec![Listener {
            filters: vec![FilterConfig {
                config: yaml("{ 1: one, true: yes, ~: nothing, tagged: !Only 5 }"),
                ..full_snapshot().listeners[0].filters[0].clone()
            }],
            ..full_snapshot().listeners[0].clone()
        }],
        ..Snapshot::default()
    });
    assert_eq!(
        odd.listeners[0].filters[0].config_json,
        r#"{"1":"one","true":"yes","null":"nothing","tagged":{"!Only":5}}"#
    );
}

#[test]
fn unset_wire_fields_mean_the_yaml_defaults() {
    let from_yaml = Snapshot::from_yaml(
        r#"
listeners:
  - name: l
    address: 127.0.0.1:0
    route_table: t
    filters:
      - { name: native, native: headers }
      - { name: wasm, wasm: { file: f.wasm, sha256: "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" } }
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ["*"]
        routes:
          - forward: { cluster: c }
clusters:
  - name: c
    endpoints: [{ address: 127.0.0.1:1 }]
    health_check: { path: / }
    outlier_detection: {}
  - name: d
    circuit_breakers: {}
limits: {}
"#,
    )
    .expect("valid YAML snapshot");

    let wire = pb::Snapshot {
        version: String::new(),
        listeners: vec![pb::Listener {
            name: "l".to_owned(),
            address: "127.0.0.1:0".to_owned(),
            route_table: "t".to_owned(),
            filters: vec![
                pb::FilterConfig {
                    name: "native".to_owned(),
                    native: Some("headers".to_owned()),
                    ..Default::default()
                },
                pb::FilterConfig {
                    name: "wasm".to_owned(),
                    wasm: Some(pb::WasmModule {
                        file: "f.wasm".to_owned(),
                        sha256: sha('c'),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        route_tables: vec![pb::RouteTable {
            name: "t".to_owned(),
            virtual_hosts: vec![pb::VirtualHost {
                name: "v".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![pb::Route {
                    forward: Some(pb::Forward {
                        cluster: "c".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            }],
        }],
        clusters: vec![
            pb::Cluster {
                name: "c".to_owned(),
                endpoints: vec![pb::Endpoint {
                    address: "127.0.0.1:1".to_owned(),
                    ..Default::default()
                }],
                health_check: Some(pb::HealthCheck {
                    path: "/".to_owned(),
                    ..Default::default()
                }),
                outlier_detection: Some(pb::OutlierDetection::default()),
                ..Default::default()
            },
            pb::Cluster {
                name: "d".to_owned(),
                circuit_breakers: Some(pb::CircuitBreakers::default()),
                ..Default::default()
            },
        ],
        limits: None,
        security: None,
    };
    assert_eq!(
        Snapshot::try_from(wire.clone()).expect("valid wire snapshot"),
        from_yaml
    );
    let with_empty_limits = pb::Snapshot {
        limits: Some(pb::Limits::default()),
        ..wire
    };
    assert_eq!(Snapshot::try_from(with_empty_limits).expect("valid"), from_yaml);
}

#[test]
fn the_demo_snapshot_round_trips() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo/snapshot.yaml");
    let text = std::fs::read_to_string(path).expect("examples/demo/snapshot.yaml");
    let text = [
        ("TELEMETRY_FILE", "/tmp/telemetry.wasm".to_owned()),
        ("TELEMETRY_SHA", sha('d')),
        ("ROUTER_FILE", "/tmp/router.wasm".to_owned()),
        ("ROUTER_SHA", sha('e')),
        ("REVIEWS_V1", "9081".to_owned()),
        ("REVIEWS_V2", "9082".to_owned()),
        ("RATINGS_A", "9083".to_owned()),
        ("RATINGS_B", "9084".to_owned()),
    ]
    .iter()
    .fold(text, |text, (placeholder, value)| text.replace(placeholder, value));
    let snapshot = Snapshot::from_yaml(&text).expect("the demo snapshot loads");
    assert_eq!(round_trip(&snapshot).expect("round trip"), snapshot);
}

/// The full snapshot on the wire, changed by `edit`, then converted back.
fn convert_edited(edit: impl FnOnce(&mut pb::Snapshot)) -> InvalidSnapshot {
    let mut wire = pb::Snapshot::from(&full_snapshot());
    edit(&mut wire);
    Snapshot::try_from(wire).expect_err("the edit makes the snapshot invalid")
}

#[test]
fn unknown_enum_values_name_the_field() {
    let err = convert_edited(|wire| wire.clusters[1].lb_policy = 9);
    assert!(
        matches!(&err, InvalidSnapshot::UnknownEnumValue { path, value: 9 } if path == "clusters[1].lb_policy"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "clusters[1].lb_policy: unknown enum value 9");

    let err = convert_edited(|wire| wire.listeners[0].filters[2].failure_policy = -1);
    assert_eq!(
        err.to_string(),
        "listeners[0].filters[2].failure_policy: unknown enum value -1"
    );
    let err = convert_edited(|wire| wire.listeners[2].kind = 4);
    assert_eq!(err.to_string(), "listeners[2].kind: unknown enum value 4");
}

#[test]
fn bad_json_names_the_field() {
    let err = convert_edited(|wire| wire.listeners[0].filters[2].config_json = "{ nope".to_owned());
    assert!(
        matches!(&err, InvalidSnapshot::InvalidJson { path, .. } if path == "listeners[0].filters[2].config_json"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("listeners[0].filters[2].config_json: invalid JSON: ") && message.contains("line 1"),
        "{message}"
    );

    let err = convert_edited(|wire| {
        if let Some(wasm) = wire.listeners[0].filters[1].wasm.as_mut() {
            wasm.vm_config_json = "plain text".to_owned();
        }
    });
    assert!(
        err.to_string()
            .starts_with("listeners[0].filters[1].wasm.vm_config_json: invalid JSON: "),
        "{err}"
    );
}

#[test]
fn out_of_range_numbers_name_the_field() {
    let err = convert_edited(|wire| {
        if let Some(direct) = wire.route_tables[0].virtual_hosts[0].routes[1].direct_response.as_mut() {
            direct.status = 70_000;
        }
    });
    assert_eq!(
        err.to_string(),
        "route_tables[0].virtual_hosts[0].routes[1].direct_response.status: 70000 is out of range"
    );
}

#[test]
fn a_wire_snapshot_is_validated() {
    let err = convert_edited(|wire| {
        wire.clusters[0].endpoints[0].weight = Some(0);
        wire.listeners[1].route_table = "missing".to_owned();
    });
    let InvalidSnapshot::Validation(LoadError::Invalid(errors)) = &err else {
        panic!("expected a validation error, got {err:?}");
    };
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            // Each element's own fields first, then the references between elements.
            "clusters[0].endpoints[0].weight: must be at least 1",
            "listeners[1].route_table: no route table named \"missing\"",
        ]
    );
    assert!(
        err.to_string()
            .contains("clusters[0].endpoints[0].weight: must be at least 1"),
        "{err}"
    );

    // Unset is the default (1), not 0.
    let mut wire = pb::Snapshot::from(&full_snapshot());
    wire.clusters[0].endpoints[0].weight = None;
    let snapshot = Snapshot::try_from(wire).expect("an unset weight is the default");
    assert_eq!(snapshot.clusters[0].endpoints[0].weight, 1);
}
