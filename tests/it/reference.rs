//! docs/reference.md against the binary, so the reference cannot drift from
//! what portico does: every long option and environment variable that
//! `portico --help` (and each subcommand's `--help`) prints, every metric family
//! of a real `/metrics` scrape, and every `Portico-Error` kind with its status.

use crate::support::*;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use portico::error::ErrorKind;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn reference() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/reference.md")).expect("docs/reference.md")
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run portico --help");
    assert!(out.status.success(), "portico {args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Every `--long-option` at the start of a help line.
fn long_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            if !l.starts_with('-') {
                return None;
            }
            // "-h, --help" and "--listen <ADDR>" alike.
            let (_, l) = l.split_once("--")?;
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then(|| format!("--{name}"))
        })
        .collect()
}

/// Every `PORTICO_*` environment variable named in `[env: NAME=]`.
fn env_vars(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split('=').next())
        .map(str::to_string)
        .collect()
}

/// The subcommands under "Commands:", without clap's own `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `word` appears in `text` with no identifier character right after it
/// (so `--listen` is not found inside `--listen-x`).
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        text[i + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

#[test]
fn every_option_and_environment_variable_in_help_is_in_the_reference() {
    let doc = reference();
    let top = help(&[]);
    let mut options = long_options(&top);
    let mut vars = env_vars(&top);
    let commands = subcommands(&top);
    assert!(
        commands.iter().any(|c| c == "check"),
        "help lists the check subcommand: {commands:?}"
    );
    for c in &commands {
        assert!(
            mentions(&doc, &format!("portico {c}")),
            "subcommand {c} is not in docs/reference.md"
        );
        let h = help(&[c]);
        options.extend(long_options(&h));
        vars.extend(env_vars(&h));
    }
    // Sanity: the parse found the options portico has always had.
    for o in [
        "--listen",
        "--tls-dir",
        "--route",
        "--drain-timeout",
        "--help",
    ] {
        assert!(
            options.contains(o),
            "{o} not parsed from --help: {options:?}"
        );
    }
    assert!(vars.contains("PORTICO_TLS_DIR"), "{vars:?}");
    let missing: Vec<_> = options.iter().filter(|o| !mentions(&doc, o)).collect();
    assert!(
        missing.is_empty(),
        "options in --help but not in docs/reference.md: {missing:?}"
    );
    let missing: Vec<_> = vars.iter().filter(|v| !mentions(&doc, v)).collect();
    assert!(
        missing.is_empty(),
        "environment variables in --help but not in docs/reference.md: {missing:?}"
    );
}

#[test]
fn help_says_a_repeatable_options_environment_variable_takes_commas() {
    let top = help(&[]);
    assert!(
        top.contains("separated by commas")
            && top.contains("PORTICO_TLS_DIR=/etc/tls/a,/etc/tls/b"),
        "{top}"
    );
}

/// The metric names of reference.md's metrics table.
fn documented_metrics(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `portico_"))
        .filter_map(|r| r.split('`').next())
        .map(|n| format!("portico_{n}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_of_a_real_scrape_is_in_the_reference_and_back() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    assert_eq!(p.get("/").await.status, 200);
    let admin = p.admin_addr.expect("admin server on");
    let scrape = plain_get(admin, "/metrics").await;
    assert_eq!(scrape.status, 200);
    let text = scrape.text();
    // Sample names, not `# TYPE` lines: OpenMetrics names a counter's family
    // without its `_total`, and the reference names what a query uses.
    let families: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect();
    assert!(
        families.contains("portico_requests_total")
            && families.contains("portico_request_duration_seconds"),
        "a request was made, yet no sample of it in:\n{text}"
    );

    let doc = reference();
    let documented = documented_metrics(&doc);
    let undocumented: Vec<_> = families.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/reference.md's metrics table: {undocumented:?}"
    );
    let unexported: Vec<_> = documented.difference(&families).collect();
    assert!(
        unexported.is_empty(),
        "in docs/reference.md's metrics table but not exported: {unexported:?}"
    );
}

#[test]
fn every_portico_error_kind_is_in_the_reference_with_its_status() {
    let doc = reference();
    // Rows of the answers table: | 502 | `connect-refused` | when |
    let rows: Vec<(u16, String)> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let status = cells.get(1)?.parse::<u16>().ok()?;
            let kind = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((status, kind.to_string()))
        })
        .collect();
    let documented: BTreeSet<&str> = rows.iter().map(|(_, k)| k.as_str()).collect();
    let actual: BTreeSet<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        documented, actual,
        "docs/reference.md's Portico-Error table against src/error.rs"
    );
    for kind in ErrorKind::ALL {
        let (status, _) = rows
            .iter()
            .find(|(_, k)| k == kind.as_str())
            .expect("documented");
        assert_eq!(
            *status,
            kind.status().as_u16(),
            "status of {} in docs/reference.md",
            kind.as_str()
        );
    }
}
