//! What ships: the Dockerfile (pinned base images, the release binary run as
//! a non-root user) and the deploy/ manifests, whose dashboard and alerts use
//! only metrics portico really exports.

use crate::support::*;

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (ins, rest) = cur
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or((cur.trim(), ""));
                out.push((ins.to_ascii_uppercase(), rest.trim().to_string()));
                cur.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_pins_every_base_image_and_runs_the_release_binary_as_non_root() {
    let ins = dockerfile();
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        froms.len() >= 2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for f in &froms {
        let image = f
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .expect("image");
        let last = image.rsplit('/').next().expect("name");
        let (_, tag) = last
            .split_once(':')
            .unwrap_or_else(|| panic!("FROM {image} has no tag"));
        let tag = tag.split('@').next().unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest",
            "FROM {image} is not pinned"
        );
    }

    let final_start = ins.iter().rposition(|(i, _)| i == "FROM").expect("FROM");
    let (build, fin) = ins.split_at(final_start);
    let user = fin
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .expect("final stage sets USER");
    let uid = user.split(':').next().expect("uid");
    assert!(uid != "root" && uid != "0", "USER {user} is root");
    assert!(uid.parse::<u32>().map_or(true, |n| n > 0), "USER {user}");
    let exposed: Vec<&str> = fin
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert!(
        exposed.contains(&"8443") && exposed.contains(&"9901"),
        "EXPOSE {exposed:?}"
    );

    let copy = fin
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first().is_some_and(|f| f.starts_with("--from=")))
        .expect("the final stage copies the binary from the build stage");
    assert_eq!(copy.len(), 3, "COPY --from=STAGE SRC DEST: {copy:?}");
    let (src, dest) = (copy[1], copy[2]);
    // The build stage puts the binary at SRC: by default the plain release
    // build, with PGO=1 the profile-guided build from benches/pgo.sh.
    assert!(
        build.iter().any(|(i, a)| i == "ARG" && a == "PGO=0"),
        "the profile-guided build is opt-in (ARG PGO=0)"
    );
    let put = build
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains(&format!("\" {src};")))
        .map(|(_, a)| a.as_str())
        .unwrap_or_else(|| panic!("no RUN in the build stage copies the binary to {src}"));
    assert!(
        put.contains("bin=$(bash benches/pgo.sh) && cp \"$bin\""),
        "PGO=1 builds with benches/pgo.sh: {put}"
    );
    assert!(
        put.contains(&format!("cp target/release/portico {src};")),
        "the default copies the plain release build: {put}"
    );
    let pgo = std::fs::read_to_string(Path::new(ROOT).join("benches/pgo.sh")).expect("pgo.sh");
    let pgo_builds: Vec<&str> = pgo.lines().filter(|l| l.contains("cargo build")).collect();
    assert_eq!(pgo_builds.len(), 2, "instrumented and optimised builds");
    for b in &pgo_builds {
        assert!(
            b.contains("cargo build --release --locked --bin portico"),
            "{b}"
        );
    }
    let entry = fin
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a.as_str())
        .expect("ENTRYPOINT");
    let first = entry
        .trim_start_matches('[')
        .split(',')
        .next()
        .expect("argv0")
        .trim()
        .trim_matches(|c| c == '"' || c == ']');
    assert_eq!(first, dest, "ENTRYPOINT runs what was copied");
    assert!(dest.ends_with("/portico"));

    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).expect("Cargo.toml");
    let bin = cargo.split("[[bin]]").nth(1).expect("[[bin]] section");
    assert!(
        bin.lines()
            .any(|l| l.replace(' ', "") == "name=\"portico\""),
        "[[bin]] name is portico"
    );

    assert_eq!(
        build
            .iter()
            .rev()
            .find(|(i, _)| i == "WORKDIR")
            .map(|(_, a)| a.as_str()),
        Some("/src"),
        "the build stage works in /src"
    );
    let builds: Vec<&str> = build
        .iter()
        .filter(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(!builds.is_empty());
    for b in &builds {
        assert!(b.contains("cargo build --release --locked"), "{b}");
    }
    assert!(
        Path::new(ROOT).join("Cargo.lock").is_file(),
        "--locked needs Cargo.lock"
    );
    if let Ok(o) = std::process::Command::new("git")
        .args(["-C", ROOT, "ls-files", "--error-unmatch", "Cargo.lock"])
        .output()
    {
        if String::from_utf8_lossy(&o.stderr).contains("not a git repository") {
            return;
        }
        assert!(o.status.success(), "Cargo.lock is not tracked by git");
    }
}

/// Sample names in an exposition, with `_bucket`, `_sum` and `_count` stripped.
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
        .map(|n| strip_histogram_suffix(n).to_string())
        .collect()
}

fn strip_histogram_suffix(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Every `portico_[a-z0-9_]+` token in `text`.
fn portico_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portico_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(strip_histogram_suffix(&tail[..end]).to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let dashboard = std::fs::read_to_string(
        Path::new(ROOT).join("deploy/components/monitoring/dashboard.json"),
    )
    .expect("dashboard");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard.json is JSON");
    assert!(parsed.is_object());
    let rules = std::fs::read_to_string(
        Path::new(ROOT).join("deploy/components/monitoring/prometheusrule.yaml"),
    )
    .expect("rules");

    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    assert_eq!(p.get("/").await.status, 200);
    let exported = exported_families(&scrape(&p).await);
    println!("exported: {exported:?}");

    let mut used = BTreeSet::new();
    let mut strings = vec![&parsed];
    while let Some(v) = strings.pop() {
        match v {
            serde_json::Value::String(s) => used.extend(portico_names(s)),
            serde_json::Value::Array(a) => strings.extend(a),
            serde_json::Value::Object(o) => strings.extend(o.values()),
            _ => {}
        }
    }
    let from_rules = portico_names(&rules);
    assert!(!used.is_empty() && !from_rules.is_empty());
    used.extend(from_rules);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used in deploy/ but not exported: {missing:?}"
    );
}
