//! A TOML `--config` file through `Config::from_args`, as `portico --config FILE`
//! and `portico check --config FILE` read it: never a panic, and a config that
//! is taken holds the reference's bounds.
//!
//! Inputs whose listen addresses are neither `off` nor an IP:PORT are skipped:
//! portico resolves host names there, and a fuzzer must not send DNS queries.
#![no_main]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portico::config::{ArgsError, Config};

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("portico-fuzz-config-{}.toml", std::process::id()))
    })
}

/// Whether every address option would parse without a name lookup.
fn no_lookup(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return true; // from_args fails on it before any address is read
    };
    ["listen", "admin-listen", "redirect-listen"]
        .iter()
        .all(|k| match table.get(*k) {
            Some(toml::Value::String(s)) => {
                let full = if s.starts_with(':') {
                    format!("0.0.0.0{s}")
                } else {
                    s.to_string()
                };
                s == "off" || full.parse::<SocketAddr>().is_ok() || !full.contains(':')
            }
            // Absent, or a number or boolean: no ':' in it, so no lookup.
            _ => true,
        })
}

fuzz_target!(|data: &[u8]| {
    // Keys and values are strings; the file is read as UTF-8 text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !no_lookup(text) {
        return;
    }
    let p = path();
    {
        let mut f = std::fs::File::create(p).expect("temp file");
        f.write_all(data).expect("write");
    }
    let path = p.to_str().expect("utf-8 temp path");
    for args in [
        vec!["portico", "--config", path],
        vec!["portico", "check", "--config", path],
    ] {
        match Config::from_args(args) {
            Ok((_, cfg)) => {
                assert!(cfg.workers >= 1);
                assert!(cfg.max_connections >= 1);
                assert!(cfg.max_requests_in_flight >= 1);
                assert!(!cfg.cert_poll_interval.is_zero());
                assert!((1024..=16 << 20).contains(&cfg.max_header_bytes));
            }
            Err(ArgsError::Config(e)) => {
                assert!(!e.to_string().is_empty());
            }
            Err(ArgsError::Clap(_)) => {}
        }
    }
});
