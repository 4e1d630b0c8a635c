//! The module graph: imports point one way, down the request path
//! (listener → tls → http server → stack → upstream → routing), and any stage
//! may use the leaves (the connection's facts and clock, configuration,
//! errors, drain, telemetry) while the leaves use only each other; nothing
//! imports `app`.
//!
//! The edges of `use crate::…` (and `crate::…` paths) between top-level
//! modules are read from the sources, and the test fails on any edge that
//! runs back up. A new module has no place until it is given one in
//! [`depth`]. When a stage needs something from above it, the thing belongs
//! lower (in a leaf, or in the stage that owns it), not the edge.

use std::collections::BTreeSet;
use std::path::Path;

/// How deep a module sits: an edge must go to a deeper module or to a leaf.
fn depth(module: &str) -> Option<u8> {
    Some(match module {
        "app" => 0,
        // Beside the path: they read (the reloader writes) the stages'
        // state; nothing imports them but `app`.
        "admin" | "inject" | "reload" => 1,
        "readiness" => 2,
        "listener" => 3,
        "proxy_protocol" => 4,
        "tls" => 5,
        "certs" => 6,
        "server" => 7,
        "stack" => 8,
        "upstream" => 9,
        "routing" => 10,
        // The leaves.
        "config" | "error" | "shutdown" | "telemetry" | "alloc" | "conn" => 100,
        _ => return None,
    })
}

fn is_leaf(module: &str) -> bool {
    depth(module) == Some(100)
}

/// The edges that break the rule, sorted.
fn violations(edges: &BTreeSet<(String, String)>) -> Vec<(String, String)> {
    edges
        .iter()
        .filter(|(from, to)| {
            let (Some(f), Some(t)) = (depth(from), depth(to)) else {
                // An unknown module is a violation until it is placed.
                return true;
            };
            if to == "app" {
                return true;
            }
            if is_leaf(from) {
                return !is_leaf(to);
            }
            t <= f
        })
        .cloned()
        .collect()
}

/// `crate::MODULE` references between top-level modules of `src/`, outside
/// comments.
fn edges(src: &Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let first = rel.components().next().expect("a component");
            let from = first
                .as_os_str()
                .to_str()
                .expect("utf-8 path")
                .trim_end_matches(".rs")
                .to_string();
            if from == "lib" || from == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for to in referenced_modules(&text) {
                if to != from {
                    out.insert((from.clone(), to));
                }
            }
        }
    }
    out
}

/// The top-level modules `text` names through `crate::`, outside line
/// comments: `crate::a::B`, and each item of a group `crate::{a::B, c}`, over
/// as many lines as it takes.
fn referenced_modules(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let Some(group) = rest.trim_start().strip_prefix('{') else {
            out.push(ident(rest));
            continue;
        };
        // The group's items at its own depth; nested groups belong to them.
        let mut depth = 0usize;
        let mut item_start = 0;
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                ',' | '}' if depth == 0 => {
                    out.push(ident(&group[item_start..j]));
                    item_start = j + 1;
                    if c == '}' {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn grouped_and_multi_line_imports_are_read() {
    let text = "use crate::config::Config; // crate::app in a comment\n\
                use crate::{\n    server::{self, Conn},\n    tls::Stream,\n    error,\n};\n\
                fn f() { crate::telemetry::count(); }\n";
    assert_eq!(
        referenced_modules(text),
        ["config", "server", "tls", "error", "telemetry"]
    );
}

#[test]
fn imports_point_down_the_request_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = edges(&src);
    // The scan itself works: the path's main edges are seen.
    for (from, to) in [
        ("listener", "tls"),
        ("listener", "server"),
        ("server", "stack"),
        ("stack", "upstream"),
        ("stack", "routing"),
        ("tls", "conn"),
    ] {
        assert!(
            found.contains(&(from.to_string(), to.to_string())),
            "edge {from} -> {to} not found: {found:?}"
        );
    }
    assert_eq!(
        violations(&found),
        Vec::<(String, String)>::new(),
        "imports that run back up the request path (or into app)"
    );
}

#[test]
fn a_planted_back_edge_is_caught() {
    let planted: BTreeSet<(String, String)> = [
        ("upstream", "server"),
        ("routing", "stack"),
        ("telemetry", "stack"),
        ("admin", "app"),
        ("newmodule", "config"),
        ("stack", "upstream"),
        ("tls", "config"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let caught: Vec<(String, String)> = violations(&planted);
    let caught: Vec<(&str, &str)> = caught
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        caught,
        [
            ("admin", "app"),
            ("newmodule", "config"),
            ("routing", "stack"),
            ("telemetry", "stack"),
            ("upstream", "server"),
        ]
    );
}

#[test]
fn a_back_edge_planted_in_a_source_tree_is_caught() {
    let dir = std::env::temp_dir().join(format!("portico-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("stack")).expect("mkdir");
    let plant = |rel: &str, text: &str| std::fs::write(dir.join(rel), text).expect("write");
    plant("lib.rs", "pub mod app;\n");
    plant(
        "upstream.rs",
        "use crate::{\n    config::Config,\n    server::Conn,\n};\n",
    );
    plant("stack/layer.rs", "fn f() { crate::app::run(); }\n");
    plant(
        "tls.rs",
        "use crate::certs::Store;\nuse crate::error::Kind;\n",
    );
    let found = violations(&edges(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        found,
        [
            ("stack".to_string(), "app".to_string()),
            ("upstream".to_string(), "server".to_string()),
        ]
    );
}
