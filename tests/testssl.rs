//! testssl.sh against the portico binary: no HIGH or CRITICAL finding.
//!
//! Slow (a minute or more), so `#[ignore]`d; run it with
//!
//!     cargo test --test testssl -- --ignored --nocapture
//!
//! It needs testssl.sh (Debian's package `testssl.sh` installs it as
//! `testssl`); without it the test says so and passes. portico runs with an
//! rcgen certificate for `127.0.0.1` from a test CA that testssl.sh is told to
//! trust (`--add-ca`), shaped as a real CA issues one (90 days, a CRL URI), in
//! front of a tiny upstream, on a loopback port. The scan
//! is `--fast`, touches no DNS and no outside host, and is killed after
//! `TESTSSL_TIMEOUT` seconds (600 by default). Every finding is written to a
//! JSON file; the test fails on HIGH, CRITICAL or FATAL (a scan that could not
//! run), and prints the LOW and MEDIUM ones.
// This suite uses only part of the support the `it` binary uses in full.
#[allow(dead_code, unused_imports)]
mod support;
use support::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child when the test ends, whichever way.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_testssl() -> Option<String> {
    ["testssl", "testssl.sh"].into_iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        })
    })
}

/// An upstream that answers every request `200 ok` and closes.
fn tiny_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    addr
}

#[test]
#[ignore = "slow (a minute or more) and needs testssl.sh: cargo test --test testssl -- --ignored"]
fn testssl_finds_nothing_high_or_critical() {
    let Some(testssl) = find_testssl() else {
        // CI installs it and sets this, so a missing package fails there.
        assert!(
            std::env::var_os("PORTICO_REQUIRE_TESTSSL").is_none(),
            "PORTICO_REQUIRE_TESTSSL is set but testssl.sh is not installed"
        );
        eprintln!(
            "SKIPPED: testssl.sh is not installed (apt-get install testssl.sh); \
             nothing was scanned"
        );
        return;
    };
    init();
    let pki = Pki::new("portico testssl CA");
    let dir = tempfile::tempdir().expect("tempdir");
    // Shaped as a CA issues one (cert-manager, an ACME CA): 90 days, with a
    // CRL distribution point. rcgen's defaults (valid until 4096, no CRL or
    // OCSP URI) are each a HIGH finding about the certificate, not portico.
    let pair = pki.leaf(&["localhost", "127.0.0.1"], |params| {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(89);
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec!["http://crl.example.invalid/portico-test.crl".to_string()],
        }];
    });
    let (cert, key) = pair.write_to(&dir.path().join("tls"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    let up = tiny_upstream();
    let log = dir.path().join("portico.log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let portico = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--upstream", &format!("http://{up}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--admin-listen", "off", "--access-log", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start portico");
    let mut portico = Kill(portico);
    let (addr, _) = support::wait_serving(
        &log,
        || portico.0.try_wait().expect("try_wait"),
        Duration::from_secs(10),
    );
    let port = addr.port();

    let json = dir.path().join("testssl.json");
    let limit = Duration::from_secs(
        std::env::var("TESTSSL_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let started = Instant::now();
    let child = Command::new(&testssl)
        .args(["--quiet", "--color", "0", "--fast", "--warnings", "off"])
        .args([
            "--nodns",
            "none",
            "--connect-timeout",
            "10",
            "--openssl-timeout",
            "10",
        ])
        .arg("--add-ca")
        .arg(&ca)
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start testssl.sh");
    let mut child = Kill(child);
    // Drain its output on threads so a full pipe never stalls it.
    let mut out = child.0.stdout.take().expect("stdout");
    let mut err = child.0.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait testssl") {
            break st;
        }
        if started.elapsed() > limit {
            panic!("testssl.sh did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    eprintln!(
        "testssl.sh ({testssl}) exited {status} after {:.0?}",
        started.elapsed()
    );

    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!("no JSON from testssl.sh ({e}); its output:\n{stdout}\n{stderr}")
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("testssl.sh JSON does not parse: {e}\n{text}"));
    let field = |f: &serde_json::Value, k: &str| {
        f.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut bad = Vec::new();
    for f in &findings {
        let sev = field(f, "severity");
        let line = format!("{sev:8} {:28} {}", field(f, "id"), field(f, "finding"));
        match sev.as_str() {
            "HIGH" | "CRITICAL" | "FATAL" => bad.push(line),
            "LOW" | "MEDIUM" | "WARN" => eprintln!("testssl.sh: {line}"),
            _ if std::env::var_os("TESTSSL_ALL").is_some() => eprintln!("testssl.sh: {line}"),
            _ => {}
        }
    }
    // The scan really ran: it reached the protocols and the certificate.
    let ids: Vec<String> = findings.iter().map(|f| field(f, "id")).collect();
    for must in ["TLS1_2", "TLS1_3", "cert_chain_of_trust"] {
        assert!(
            ids.iter().any(|i| i == must),
            "testssl.sh reported no '{must}': the scan did not run through.\n{stdout}\n{stderr}"
        );
    }
    eprintln!("testssl.sh: {} findings in all", findings.len());
    assert!(
        bad.is_empty(),
        "testssl.sh findings of severity HIGH or CRITICAL:\n{}\n\nfull output:\n{stdout}",
        bad.join("\n")
    );
}
