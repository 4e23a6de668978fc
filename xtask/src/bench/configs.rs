//! Configuration files for the origin and the proxies, written into the run's temp dir.
//!
//! Every server gets one worker (process or thread), listens on 127.0.0.1 only, logs no
//! requests, and keeps connections alive on both sides, so the comparison is about the
//! proxies' own cost per request.

use std::fmt::Write as _;
use std::path::Path;

/// The body the origin answers every request with.
pub(crate) const BODY: &str = "hello\n";

/// Requests per keep-alive connection before nginx closes it; high so that no server
/// recycles connections during a run (nginx's default is 1000).
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// Lines common to both nginx configs: one worker, files under `dir`, no access log.
fn nginx_common(dir: &Path, name: &str) -> String {
    let dir = dir.display();
    format!(
        "worker_processes 1;\n\
         pid {dir}/{name}.pid;\n\
         error_log {dir}/{name}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n"
    )
}

/// The http-block lines common to both nginx configs.
fn nginx_http_common(dir: &Path, name: &str) -> String {
    let dir = dir.display();
    format!(
        "    access_log off;\n\
         \x20   keepalive_requests {KEEPALIVE_REQUESTS};\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   client_body_temp_path {dir}/{name}-client-body;\n\
         \x20   proxy_temp_path {dir}/{name}-proxy;\n"
    )
}

/// The origin: nginx answering `200 hello` itself; `stub_status` on `/nginx_status` when
/// this nginx has the module, to count the connections proxies open to it.
pub(crate) fn nginx_origin(dir: &Path, port: u16, stub_status: bool) -> String {
    let mut conf = nginx_common(dir, "origin");
    conf.push_str("http {\n");
    conf.push_str(&nginx_http_common(dir, "origin"));
    conf.push_str("    default_type text/plain;\n    server {\n");
    let _ = writeln!(conf, "        listen 127.0.0.1:{port} backlog=4096;");
    let _ = writeln!(
        conf,
        "        location / {{ return 200 \"{}\"; }}",
        BODY.escape_default()
    );
    if stub_status {
        conf.push_str("        location = /nginx_status { stub_status; }\n");
    }
    conf.push_str("    }\n}\n");
    conf
}

/// nginx as a reverse proxy to the origin, with a keep-alive upstream pool.
pub(crate) fn nginx_proxy(dir: &Path, port: u16, origin: u16) -> String {
    let mut conf = nginx_common(dir, "nginx");
    conf.push_str("http {\n");
    conf.push_str(&nginx_http_common(dir, "nginx"));
    let _ = write!(
        conf,
        "    upstream origin {{\n\
         \x20       server 127.0.0.1:{origin};\n\
         \x20       keepalive 64;\n\
         \x20       keepalive_requests {KEEPALIVE_REQUESTS};\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port} backlog=4096;\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://origin;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    );
    conf
}

/// HAProxy, one thread, HTTP mode, keep-alive to the server with `http-reuse always`.
pub(crate) fn haproxy(port: u16, origin: u16) -> String {
    format!(
        "global\n\
         \x20   nbthread 1\n\
         \x20   maxconn 4096\n\
         defaults\n\
         \x20   mode http\n\
         \x20   option http-keep-alive\n\
         \x20   http-reuse always\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         frontend bench\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend origin\n\
         backend origin\n\
         \x20   server origin 127.0.0.1:{origin}\n"
    )
}

/// The weft snapshot: one HTTP/1.1 listener forwarding everything to the origin.
pub(crate) fn weft(port: u16, origin: u16) -> String {
    format!(
        "version: bench\n\
         listeners:\n\
         \x20 - {{ name: main, address: \"127.0.0.1:{port}\", protocol: http1, route_table: rt }}\n\
         route_tables:\n\
         \x20 - name: rt\n\
         \x20   virtual_hosts:\n\
         \x20     - name: all\n\
         \x20       domains: [\"*\"]\n\
         \x20       routes:\n\
         \x20         - forward: {{ cluster: origin }}\n\
         clusters:\n\
         \x20 - name: origin\n\
         \x20   endpoints: [{{ address: \"127.0.0.1:{origin}\" }}]\n"
    )
}
