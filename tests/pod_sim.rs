//! Pod simulation: one network namespace holds the primary and portico, sharing
//! its loopback as a Pod's containers do, with the TLS Secret laid out as the
//! kubelet lays it; a client in a second namespace reaches portico over a veth
//! pair (192.0.2.0/24, TEST-NET-1), and a rolling update (SIGTERM with requests
//! in flight) loses nothing. Needs root and `ip netns`; skips, saying why, without.

// This suite uses only part of the support the `it` binary uses in full.
#[allow(dead_code, unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{sh, Netns, Pki};

/// A primary that answers `/` at once and `/slow` after one second.
const PRIMARY: &str = r#"
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(1.0)
            body = b"slow ok"
        else:
            body = b"hello from the primary"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
"#;

/// Lays out a Secret volume as the kubelet does: a timestamped directory, a
/// `..data` symlink to it, and `tls.crt`/`tls.key` symlinks through `..data`.
fn kubelet_secret(dir: &Path, cert: &str, key: &str) {
    let ts = dir.join("..2026_11_26_21_51_12.123456789");
    std::fs::create_dir_all(&ts).expect("mkdir");
    std::fs::write(ts.join("tls.crt"), cert).expect("cert");
    std::fs::write(ts.join("tls.key"), key).expect("key");
    std::os::unix::fs::symlink("..2026_11_26_21_51_12.123456789", dir.join("..data"))
        .expect("..data");
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).expect("tls.crt");
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).expect("tls.key");
}

fn curl_in(ns: &str, ca: &Path, path: &str) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
    ])
    .arg(ca)
    .args([
        "--resolve",
        "app.example.com:8443:192.0.2.1",
        &format!("https://app.example.com:8443{path}"),
    ]);
    c
}

fn skip(why: &str) {
    eprintln!("SKIPPED pod simulation: {why}");
}

#[test]
fn pod_in_a_network_namespace_serves_a_client_over_veth_and_a_rolling_update_loses_nothing() {
    if Command::new("curl").arg("--version").output().is_err() {
        return skip("curl is not installed (.ci/run installs it)");
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let mut ns = match Netns::pair("portico", &tag, "192.0.2") {
        Ok(ns) => ns,
        Err(e) => {
            return skip(&format!(
                "cannot make network namespaces here ({e}); needs root and iproute2"
            ))
        }
    };

    let pki = Pki::new("pod sim CA");
    let pair = pki.server(&["app.example.com"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).expect("mkdir");
    kubelet_secret(&secret, &pair.cert_pem, &pair.key_pem);
    let ca: PathBuf = dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");

    // The primary: on the Pod's loopback only, unreachable from the client.
    ns.children.push(
        Command::new("ip")
            .args(["netns", "exec", &ns.pod, "python3", "-c", PRIMARY])
            .spawn()
            .expect("primary"),
    );
    // portico: the Pod's public port.
    let portico = Command::new("ip")
        .args(["netns", "exec", &ns.pod, env!("CARGO_BIN_EXE_portico")])
        .args([
            "--listen",
            "0.0.0.0:8443",
            "--admin-listen",
            "127.0.0.1:9901",
        ])
        .args(["--upstream", "http://127.0.0.1:8080", "--access-log", "off"])
        .arg("--tls-dir")
        .arg(&secret)
        .args(["--drain-timeout", "10s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("portico");
    let portico_pid = portico.id();
    ns.children.push(portico);

    // Wait as the kubelet's readiness probe does, on the admin port inside the Pod.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.pod,
                "curl",
                "-sS",
                "-f",
                "http://127.0.0.1:9901/readyz",
            ])
            .output()
            .expect("curl");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "portico never became ready in the pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The client, outside the Pod, gets the primary's answer through portico.
    let out = curl_in(&ns.peer, &ca, "/").output().expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the primary"
    );

    // The primary is not exposed: only portico's port is reachable from outside.
    let direct = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.peer,
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://192.0.2.1:8080/",
        ])
        .output()
        .expect("curl");
    assert!(
        !direct.status.success(),
        "the primary must not be reachable from outside the Pod"
    );

    // Rolling update: five slow requests in flight, then SIGTERM.
    let in_flight: Vec<Child> = (0..5)
        .map(|_| {
            curl_in(&ns.peer, &ca, "/slow")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    sh(&["kill", "-TERM", &portico_pid.to_string()]).expect("SIGTERM");
    for c in in_flight {
        let out = c.wait_with_output().expect("curl");
        assert!(
            out.status.success(),
            "request in flight lost at SIGTERM: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "slow ok");
    }
    let portico = ns.children.pop().expect("portico child");
    let out = portico.wait_with_output().expect("portico exits");
    assert_eq!(
        out.status.code(),
        Some(0),
        "portico exit status; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        t0.elapsed()
    );

    // After the drain the port is closed: a new client is refused, not hung.
    let after = curl_in(&ns.peer, &ca, "/").output().expect("curl");
    assert!(!after.status.success());
}
