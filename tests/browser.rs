//! A real browser as the client: headless Chromium, trusting only the test
//! certificate's key (SPKI pin), loads a page from the sample primary through
//! portico over HTTP/2, runs its WebSocket echo through portico, and takes a
//! screenshot. Skips, saying why, where Chromium is not installed, except
//! under `CI=true`, where a missing Chromium fails the test.

// This suite uses only part of the support the `it` binary uses in full.
#[allow(dead_code, unused_imports)]
mod support;

#[path = "../examples/primary.rs"]
mod primary;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::Pki;
use x509_parser::prelude::*;

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Whether this runs under CI (`CI=true`, as CI systems set it).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_chromium(
    bin: &str,
    profile: &std::path::Path,
    spki: &str,
    extra: &[String],
    url: &str,
) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=5000",
        "--window-size=900,500",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn headless_chromium_loads_a_page_over_h2_and_a_websocket_through_portico() {
    let Some(bin) = chromium() else {
        // CI must never pass without the browser: .ci/run installs it there.
        assert!(
            !in_ci(),
            "chromium is not installed (/usr/bin/chromium or /usr/bin/chromium-browser), \
             and CI=true needs the browser test to run: .ci/run installs it"
        );
        eprintln!("SKIPPED browser test: chromium is not installed (.ci/run installs it)");
        return;
    };
    support::init();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let primary_addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = l.local_addr().expect("addr");
        tokio::spawn(primary::serve(l));
        a
    });

    let pki = Pki::new("browser test CA");
    let pair = pki.server(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pair.write_to(&dir.path().join("tls"));
    let leaf = pair.leaf_der();
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref()).expect("parse leaf");
    let spki = base64(&Sha256::digest(parsed.public_key().raw));

    let log = dir.path().join("portico.log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut portico = Kill(
        Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args(["--upstream", &format!("http://{primary_addr}")])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("portico"),
    );
    let (addr, _) = support::wait_serving(
        &log,
        || portico.0.try_wait().expect("try_wait"),
        Duration::from_secs(10),
    );
    let port = addr.port();

    let url = format!("https://localhost:{port}/");
    let profile = dir.path().join("profile");
    let dom = run_chromium(bin, &profile, &spki, &["--dump-dom".to_string()], &url);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains("Hello through portico"),
        "page did not render through portico; chromium stderr: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        dom_text.contains("echo: ping"),
        "WebSocket echo did not arrive: {dom_text}"
    );

    let shot = std::env::var_os("PORTICO_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("screenshot.png"));
    let profile2 = dir.path().join("profile2");
    let _ = run_chromium(
        bin,
        &profile2,
        &spki,
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 2000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );

    // The access log shows the browser spoke HTTP/2 to portico for the page and
    // upgraded an HTTP/1.1 connection for the WebSocket.
    let _ = portico.0.kill();
    let _ = portico.0.wait();
    let log = std::fs::read_to_string(&log).expect("portico log");
    assert!(
        log.lines().any(|l| l.contains("path=/ ")
            && l.contains("proto=HTTP/2.0")
            && l.contains("status=200")),
        "no HTTP/2 page load in the access log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("path=/ws") && l.contains("status=101")),
        "no WebSocket upgrade in the access log:\n{log}"
    );
}
