//! `portico inject`: reads Kubernetes manifests and writes them back with
//! portico added as the ambassador of every workload (docs/reference.md, "`portico inject`").
//!
//! A pure core, [`inject`] (manifest text in, manifest text or a typed error
//! out), and [`main`], the command line around it. It owns nothing of the
//! proxy: it needs none of portico's runtime options, starts no logging and no
//! runtime. [`yaml`] reads and writes the documents; [`pod`] changes one object.
//!
//! Documents that are not changed are written back as their own text, comments
//! included; a changed one keeps the comment lines above it and is written in
//! block YAML (also when it was JSON: JSON in, YAML out for injected documents).

pub mod pod;
pub mod yaml;

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use pod::{Injected, Outcome};
use yaml::Node;

/// Where portico goes in the Pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Sidecar {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+):
    /// started before the app, stopped after it.
    #[default]
    Native,
    /// A plain container beside the app, for clusters older than 1.29.
    Container,
}

/// What to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The TLS Secret; `None`: `<workload name>-tls`.
    pub secret: Option<String>,
    /// The app's port; `None`: the first container's first port, else 8080.
    pub app_port: Option<u16>,
    /// portico's image.
    pub image: String,
    /// portico's TLS port.
    pub tls_port: u16,
    /// portico's admin port (probes, metrics).
    pub admin_port: u16,
    /// Native sidecar or plain container.
    pub sidecar: Sidecar,
    /// Extra environment for portico's container, replacing ours of the same name.
    pub env: Vec<(String, String)>,
}

/// The image the project's manifests name.
pub const DEFAULT_IMAGE: &str = "ghcr.io/example/portico:0.1.0";

impl Default for Options {
    fn default() -> Self {
        Self {
            secret: None,
            app_port: None,
            image: DEFAULT_IMAGE.into(),
            tls_port: 8443,
            admin_port: 9901,
            sidecar: Sidecar::Native,
            env: Vec::new(),
        }
    }
}

/// One input: a file's name (for messages) and its text.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file as given, or `<stdin>`.
    pub name: String,
    /// Its contents.
    pub text: String,
}

/// Bad input: which document (file, 1-based index, kind and name), which field, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectError {
    /// The file, or `<stdin>`.
    pub source: String,
    /// The document's place in its file, counting from 1 (comment-only pieces not counted).
    pub index: usize,
    /// Its `kind`, if it has one.
    pub kind: Option<String>,
    /// Its `metadata.name`, if it has one.
    pub name: Option<String>,
    /// The field, a dotted path from the document's root; empty for the document itself.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.index)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k}/{n})")?,
            (Some(k), None) => write!(f, " ({k}, no name)")?,
            _ => {}
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for InjectError {}

/// The manifests with portico added, and one line per change for stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The manifests, every document in its place.
    pub output: String,
    /// What was done, one line each.
    pub notes: Vec<String>,
}

/// One document of the input, parsed.
struct Doc<'a> {
    source: usize,
    index: usize,
    piece: yaml::Piece<'a>,
    node: Node,
    changed: bool,
}

/// Adds portico to every workload in `sources`, and moves the Services that
/// select them onto portico's port.
pub fn inject(sources: &[Source], opts: &Options) -> Result<Injection, Box<InjectError>> {
    let mut docs = Vec::new();
    let mut pieces_by_source = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        let text = source.text.strip_prefix('\u{feff}').unwrap_or(&source.text);
        let pieces = yaml::split(text);
        let mut index = 0;
        for piece in &pieces {
            let parsed = yaml::parse(piece.text);
            let node = match parsed {
                Ok(None) => continue,
                Ok(Some(node)) => node,
                Err(e) => {
                    return Err(Box::new(InjectError {
                        source: source.name.clone(),
                        index: index + 1,
                        kind: None,
                        name: None,
                        field: String::new(),
                        message: format!(
                            "neither YAML nor JSON: {} (line {}, column {})",
                            e.message,
                            piece.first_line + e.line,
                            e.column
                        ),
                    }))
                }
            };
            index += 1;
            let error = |field: &str, message: &str| {
                Box::new(InjectError {
                    source: source.name.clone(),
                    index,
                    kind: pod::kind(&node).map(str::to_owned),
                    name: pod::name(&node).map(str::to_owned),
                    field: field.into(),
                    message: message.into(),
                })
            };
            if !node.is_map() {
                return Err(error(
                    "",
                    "not a Kubernetes object (a mapping with apiVersion and kind)",
                ));
            }
            if node.get("kind").is_some_and(|k| k.as_str().is_none()) {
                return Err(error("kind", "must be a string"));
            }
            docs.push(Doc {
                source: s,
                index,
                piece: *piece,
                node,
                changed: false,
            });
        }
        pieces_by_source.push(pieces);
    }

    let mut injected: Vec<Injected> = Vec::new();
    let mut notes = Vec::new();
    for doc in &mut docs {
        let source = &sources[doc.source].name;
        let mut visit = |obj: &mut Node, prefix: String| -> Result<bool, Box<InjectError>> {
            let label = label(obj);
            match pod::inject(obj, opts) {
                Ok(Outcome::Other) => Ok(false),
                Ok(Outcome::Already) => {
                    notes.push(format!("{label}: has portico already, left as it was"));
                    Ok(false)
                }
                Ok(Outcome::Injected(i)) => {
                    notes.push(format!("{label}: {}", i.note));
                    injected.push(i);
                    Ok(true)
                }
                Err(f) => Err(Box::new(InjectError {
                    source: source.clone(),
                    index: doc.index,
                    kind: pod::kind(obj).map(str::to_owned),
                    name: pod::name(obj).map(str::to_owned),
                    field: format!("{prefix}{}", f.field),
                    message: f.message,
                })),
            }
        };
        if is_list(&doc.node) {
            let items = list_items(&mut doc.node).ok_or_else(|| {
                Box::new(InjectError {
                    source: source.clone(),
                    index: doc.index,
                    kind: Some("List".into()),
                    name: None,
                    field: "items".into(),
                    message: "must be a list of objects".into(),
                })
            })?;
            for (i, item) in items.iter_mut().enumerate() {
                doc.changed |= visit(item, format!("items[{i}]."))?;
            }
        } else {
            doc.changed |= visit(&mut doc.node, String::new())?;
        }
    }
    for doc in &mut docs {
        let mut retarget = |obj: &mut Node| {
            let lines = pod::retarget_service(obj, &injected);
            let label = label(obj);
            notes.extend(lines.iter().map(|l| format!("{label}: {l}")));
            !lines.is_empty()
        };
        if is_list(&doc.node) {
            for item in list_items(&mut doc.node).into_iter().flatten() {
                doc.changed |= retarget(item);
            }
        } else {
            doc.changed |= retarget(&mut doc.node);
        }
    }

    let mut output = String::new();
    let mut next = docs.iter().peekable();
    for (s, pieces) in pieces_by_source.iter().enumerate() {
        let mut first = true;
        for piece in pieces {
            // Files follow one another as documents of one stream.
            if first && !output.is_empty() && !piece.text.starts_with("---") {
                if !output.ends_with('\n') {
                    output.push('\n');
                }
                output.push_str("---\n");
            }
            first = false;
            let doc = next.next_if(|d| d.source == s && d.piece == *piece);
            match doc {
                Some(d) if d.changed => output.push_str(&rewrite(piece.text, &d.node)),
                _ => output.push_str(piece.text),
            }
        }
    }
    Ok(Injection { output, notes })
}

fn label(obj: &Node) -> String {
    format!(
        "{}/{}",
        pod::kind(obj).unwrap_or("?"),
        pod::name(obj).unwrap_or("?")
    )
}

fn is_list(obj: &Node) -> bool {
    pod::kind(obj) == Some("List") || obj.get("kind").is_none() && obj.get("items").is_some()
}

fn list_items(obj: &mut Node) -> Option<&mut Vec<Node>> {
    match obj.get_mut("items") {
        None => None,
        Some(n) => n.as_seq_mut(),
    }
}

/// A changed document: the comment lines above and below it kept, the rest
/// written anew. JSON (a document that begins with `{`) loses its quoting.
fn rewrite(text: &str, node: &Node) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let is_aside = |l: &str| {
        let t = l.trim_start();
        t.is_empty() || t.starts_with('#')
    };
    let mut head = 0;
    let mut marker_line = false;
    if let Some(first) = lines.first() {
        let rest = first.strip_prefix("---").map(str::trim_start);
        if let Some(rest) = rest {
            // `---` alone or with a comment stays; `--- {json}` is content.
            if rest.is_empty() || rest.starts_with('#') {
                head = 1;
            } else {
                marker_line = true;
            }
        }
    }
    while head < lines.len() && is_aside(lines[head]) {
        head += 1;
    }
    let mut tail = lines.len();
    while tail > head
        && (lines[tail - 1].starts_with('#')
            || lines[tail - 1].trim().is_empty()
            || lines[tail - 1].trim_end() == "...")
    {
        tail -= 1;
    }
    let json = lines
        .get(head)
        .is_some_and(|l| l.trim_start().starts_with('{') || l.trim_start().starts_with('['))
        || marker_line;
    let mut node = node.clone();
    if json {
        node.restyle();
    }
    let mut out: String = lines[..head].concat();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if marker_line {
        out.push_str("---\n");
    }
    out.push_str(&yaml::write(&node));
    out.push_str(&lines[tail..].concat());
    out
}

/// `portico inject`'s command line (flags only: no environment, no file).
#[derive(Parser, Debug)]
#[command(
    name = "portico inject",
    bin_name = "portico inject",
    version,
    about = "Add portico to the workloads in Kubernetes manifests and write them to stdout",
    long_about = "Reads Kubernetes manifests (YAML or JSON, several documents, Lists) and writes \
                  them to stdout with portico added as the TLS ambassador of every Deployment, \
                  StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and Pod; a Service that \
                  selects one of them is pointed at portico's https port. Other documents pass \
                  through unchanged.\n\nExample: portico inject app.yaml | kubectl apply -f -"
)]
pub struct InjectCli {
    /// The options.
    #[command(flatten)]
    pub args: InjectArgs,
}

/// `portico inject`'s options.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct InjectArgs {
    /// Manifest files (YAML or JSON); none or `-`: stdin.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The TLS Secret portico serves (default: `<workload name>-tls`).
    #[arg(
        long,
        value_name = "NAME",
        value_parser = parse_secret,
        // Not the doc comment: rustdoc would read `<workload name>` as HTML.
        help = "The kubernetes.io/tls Secret portico serves [default: <workload name>-tls]"
    )]
    pub secret: Option<String>,
    /// The app's port on 127.0.0.1 [default: the first container's first port, else 8080].
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Option<u16>,
    /// portico's image.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// portico's TLS port (the Service's target port).
    #[arg(long, value_name = "PORT", default_value_t = 8443, value_parser = clap::value_parser!(u16).range(1..))]
    pub tls_port: u16,
    /// portico's admin port (probes and metrics).
    #[arg(long, value_name = "PORT", default_value_t = 9901, value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: u16,
    /// `native`: an init container with restartPolicy Always (Kubernetes 1.29+); `container`: beside the app.
    #[arg(long, value_name = "KIND", value_enum, default_value_t = Sidecar::Native)]
    pub sidecar: Sidecar,
    /// An environment variable for portico's container, e.g. PORTICO_LOG_LEVEL=debug; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
}

/// A Secret's name: a DNS subdomain (RFC 1123), as Kubernetes requires.
fn parse_secret(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a Secret's name is lower-case letters, digits, '-' and '.' (RFC 1123)".into())
    }
}

/// `NAME=VALUE` with a name Kubernetes accepts for an environment variable.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err("must be NAME=VALUE".into());
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        return Err(format!(
            "'{name}' is no environment variable name (letters, digits, '_', '-', '.'; not starting with a digit)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

impl InjectArgs {
    /// The options, checked against one another.
    pub fn options(&self) -> Result<Options, String> {
        if self.tls_port == self.admin_port {
            return Err(format!(
                "--admin-port: {} is also --tls-port",
                self.admin_port
            ));
        }
        if let Some(app) = self.app_port {
            for (port, option) in [
                (self.tls_port, "--tls-port"),
                (self.admin_port, "--admin-port"),
            ] {
                if app == port {
                    return Err(format!("--app-port: {app} is also {option}"));
                }
            }
        }
        if self.image.trim().is_empty() || self.image.contains(char::is_whitespace) {
            return Err(format!("--image: '{}' is no image reference", self.image));
        }
        Ok(Options {
            secret: self.secret.clone(),
            app_port: self.app_port,
            image: self.image.clone(),
            tls_port: self.tls_port,
            admin_port: self.admin_port,
            sidecar: self.sidecar,
            env: self.env.clone(),
        })
    }
}

/// Runs `portico inject` with the whole command line (`portico inject ...`):
/// writes the manifests to stdout and exits 0, or writes nothing to stdout,
/// names the problem on stderr and exits 2.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    // Drop the program name so that clap sees `inject` as its own name.
    let args = args.into_iter().skip(1);
    let cli = match InjectCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let opts = match cli.args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("portico inject: {e}");
            return ExitCode::from(2);
        }
    };
    let mut files = cli.args.files.clone();
    if files.is_empty() {
        files.push(PathBuf::from("-"));
    }
    let mut sources = Vec::new();
    for file in &files {
        let read = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| ("<stdin>".to_owned(), text))
        } else {
            std::fs::read_to_string(file).map(|t| (file.display().to_string(), t))
        };
        match read {
            Ok((name, text)) => sources.push(Source { name, text }),
            Err(e) => {
                let name = if file.as_os_str() == "-" {
                    "<stdin>".to_owned()
                } else {
                    file.display().to_string()
                };
                eprintln!("portico inject: {name}: cannot read: {e}");
                return ExitCode::from(2);
            }
        }
    }
    match inject(&sources, &opts) {
        Ok(done) => {
            let mut out = std::io::stdout().lock();
            if out
                .write_all(done.output.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                // A closed pipe (`| head`): nothing more to say to anyone.
                return ExitCode::from(1);
            }
            for note in &done.notes {
                eprintln!("portico inject: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portico inject: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<Injection, Box<InjectError>> {
        inject(
            &[Source {
                name: "in.yaml".into(),
                text: text.into(),
            }],
            &Options::default(),
        )
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n    - name: app\n      image: app:1\n";

    #[test]
    fn other_documents_keep_their_text_and_order() {
        let text = format!(
            "# a config\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}} # inline\n---\n# the pod\n{POD}---\n\
             apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w}}\nspec: {{containers: []}}\n"
        );
        let out = run(&text).map(|i| i.output).unwrap_or_default();
        assert!(out.starts_with("# a config\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c} # inline\n---\n# the pod\napiVersion: v1\n"), "{out}");
        assert!(out.ends_with("---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {containers: []}\n"), "{out}");
        assert!(out.contains("    - name: portico\n"), "{out}");
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = run(POD).map(|i| i.output).unwrap_or_default();
        let twice = run(&once).map(|i| i.output).unwrap_or_default();
        assert_ne!(once, POD);
        assert_eq!(twice, once);
    }

    #[test]
    fn errors_name_file_document_kind_name_and_field() {
        let text = format!("{POD}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  containers: []\n");
        let e = run(&text).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("in.yaml: document 2 (Deployment/d): spec.containers: a Deployment's containers go in spec.template.spec.containers")
        );
        let e = run("a: 1\n---\nb: [\n").err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e
                .starts_with("in.yaml: document 2: neither YAML nor JSON: ")
                && e.ends_with("(line 4, column 1)")),
            "{e:?}"
        );
    }

    #[test]
    fn options_that_collide_are_refused() {
        let args = |extra: &[&str]| {
            let mut v = vec!["inject"];
            v.extend_from_slice(extra);
            InjectCli::try_parse_from(v).map(|c| c.args.options())
        };
        assert_eq!(
            args(&["--tls-port", "9901"]).ok(),
            Some(Err("--admin-port: 9901 is also --tls-port".into()))
        );
        assert_eq!(
            args(&["--app-port", "8443"]).ok(),
            Some(Err("--app-port: 8443 is also --tls-port".into()))
        );
        assert!(args(&["--env", "1X=y"]).is_err());
        assert!(args(&["--secret", "Bad_Name"]).is_err());
        assert!(args(&["--app-port", "0"]).is_err());
        assert_eq!(
            args(&["--env", "A=b=c", "--env", "PORTICO_LOG_LEVEL=debug"])
                .ok()
                .and_then(Result::ok)
                .map(|o| o.env),
            Some(vec![
                ("A".into(), "b=c".into()),
                ("PORTICO_LOG_LEVEL".into(), "debug".into())
            ])
        );
    }
}
