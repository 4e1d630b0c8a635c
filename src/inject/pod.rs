//! What injection does to one object: find a workload's Pod template, add the
//! portico container, its Secret volume, the annotation and the shutdown
//! timing; and move a selecting Service's target port onto portico.
//!
//! The container mirrors deploy/sidecar.yaml (native) and
//! deploy/deployment.yaml (classic container): same ports, probes, security
//! context, resources and drain settings, so an injected Pod behaves like the
//! manifests the project tests.

use super::yaml::Node;
use super::{Options, Sidecar};
use crate::config::Opt;

/// The Pod template annotation that marks a workload as injected.
pub const ANNOTATION: &str = "portico/injected";
/// The name of the injected container, and the prefix of its volume.
pub const CONTAINER: &str = "portico";
/// The volume that holds the TLS Secret.
pub const VOLUME: &str = "portico-tls";
/// Where the Secret is mounted (a directory: `tls.crt`, `tls.key`).
pub const TLS_DIR: &str = "/etc/portico/tls";
/// Seconds of grace an injected Pod needs at least: the app's preStop (5 s)
/// or portico's drain delay (5 s), plus portico's drain timeout (30 s), plus
/// slack for the app's own exit (deploy/deployment.yaml uses the same).
pub const GRACE_SECONDS: i64 = 45;

/// What was wrong with an object: the field (dotted path from the object's
/// root) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The field, e.g. `spec.template.spec.containers`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn fault(field: impl Into<String>, message: impl Into<String>) -> Fault {
    Fault {
        field: field.into(),
        message: message.into(),
    }
}

/// A workload that now has portico: what a Service needs to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    /// `metadata.namespace` of the workload, if given.
    pub namespace: Option<String>,
    /// The Pod template's labels.
    pub labels: Vec<(String, String)>,
    /// The app's port that portico forwards to.
    pub app_port: u16,
    /// Names the Pod's containers give that port (a Service may target it by name).
    pub app_port_names: Vec<String>,
    /// One line for stderr.
    pub note: String,
}

/// What became of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a workload: untouched.
    Other,
    /// A workload that had portico already: untouched.
    Already,
    /// Injected now.
    Injected(Injected),
}

/// The object's `kind`, if a string.
pub fn kind(obj: &Node) -> Option<&str> {
    obj.get("kind").and_then(Node::as_str)
}

/// The object's `metadata.name` (or `generateName`), if a string.
pub fn name(obj: &Node) -> Option<&str> {
    let meta = obj.get("metadata")?;
    meta.get("name")
        .or_else(|| meta.get("generateName"))
        .and_then(Node::as_str)
}

fn group(obj: &Node) -> Option<&str> {
    let api = obj.get("apiVersion").and_then(Node::as_str)?;
    Some(api.rsplit_once('/').map_or("", |(g, _)| g))
}

/// Where a workload kind keeps its Pod template, `None` for a Pod itself;
/// `Err` for an object that is no workload.
fn template_path(obj: &Node) -> Result<Option<&'static [&'static str]>, ()> {
    match (group(obj), kind(obj)) {
        (Some(""), Some("Pod")) => Ok(None),
        (Some("apps"), Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"))
        | (Some("batch"), Some("Job")) => Ok(Some(&["spec", "template"])),
        (Some("batch"), Some("CronJob")) => Ok(Some(&["spec", "jobTemplate", "spec", "template"])),
        _ => Err(()),
    }
}

/// Injects portico into `obj` if it is a workload.
pub fn inject(obj: &mut Node, opts: &Options) -> Result<Outcome, Fault> {
    let Ok(path) = template_path(obj) else {
        return Ok(Outcome::Other);
    };
    let kind = kind(obj).unwrap_or_default().to_owned();
    let name = name(obj).map(str::to_owned);
    let namespace = obj
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .map(str::to_owned);
    let spec = obj.get("spec");
    // A template where this kind has none, or none where it needs one.
    match path {
        None => {
            if spec.and_then(|s| s.get("template")).is_some() {
                return Err(fault(
                    "spec.template",
                    "a Pod has no template: its containers go in spec.containers",
                ));
            }
        }
        Some(p) => {
            if kind == "CronJob" && spec.and_then(|s| s.get("template")).is_some() {
                return Err(fault(
                    "spec.template",
                    "a CronJob's Pod template goes in spec.jobTemplate.spec.template",
                ));
            }
            if spec.and_then(|s| s.get("containers")).is_some() {
                return Err(fault(
                    "spec.containers",
                    format!(
                        "a {kind}'s containers go in {}.spec.containers",
                        p.join(".")
                    ),
                ));
            }
        }
    }
    let prefix = path.map_or(String::new(), |p| format!("{}.", p.join(".")));
    let mut template: &mut Node = obj;
    for (i, key) in path.unwrap_or_default().iter().enumerate() {
        let here = path.unwrap_or_default()[..=i].join(".");
        template = match template.get_mut(key) {
            Some(t) if t.is_map() => t,
            Some(t) if !t.is_null() => return Err(fault(here, "must be a mapping")),
            _ => {
                return Err(fault(
                    path.unwrap_or_default().join("."),
                    format!("missing: a {kind} needs a Pod template"),
                ))
            }
        };
    }
    let pod = &*template;
    let spec_field = format!("{prefix}spec");
    let spec = match pod.get("spec") {
        Some(s) if s.is_map() => s,
        Some(s) if !s.is_null() => return Err(fault(spec_field, "must be a mapping")),
        _ => {
            return Err(fault(
                format!("{spec_field}.containers"),
                "no containers: there is no app to put portico in front of",
            ))
        }
    };
    let containers_field = format!("{spec_field}.containers");
    let containers = match spec
        .get("containers")
        .filter(|c| !c.is_null())
        .map(Node::as_seq)
    {
        Some(Some(c)) if !c.is_empty() => c,
        Some(Some(_)) | None => {
            return Err(fault(
                containers_field,
                "no containers: there is no app to put portico in front of",
            ))
        }
        Some(None) => return Err(fault(containers_field, "must be a list of containers")),
    };
    let inits = match spec.get("initContainers") {
        None => &[][..],
        Some(n) if n.is_null() => &[][..],
        Some(n) => n.as_seq().ok_or_else(|| {
            fault(
                format!("{spec_field}.initContainers"),
                "must be a list of containers",
            )
        })?,
    };
    let all = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{containers_field}[{i}]"), c))
        .chain(
            inits
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{spec_field}.initContainers[{i}]"), c)),
        );
    // (the port's field, its name, its number)
    let mut ports = Vec::new();
    for (field, c) in all.clone() {
        if !c.is_map() {
            return Err(fault(field, "must be a mapping (a container)"));
        }
        if c.get("name").and_then(Node::as_str).is_none() {
            return Err(fault(format!("{field}.name"), "missing"));
        }
    }
    let annotated = pod
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(ANNOTATION))
        .is_some();
    if annotated || all.clone().any(|(_, c)| is_portico(c)) {
        return Ok(Outcome::Already);
    }
    for (field, c) in all.clone() {
        let Some(list) = c.get("ports").filter(|p| !p.is_null()) else {
            continue;
        };
        let list = list
            .as_seq()
            .ok_or_else(|| fault(format!("{field}.ports"), "must be a list"))?;
        for (j, p) in list.iter().enumerate() {
            let pf = format!("{field}.ports[{j}]");
            let number = p
                .get("containerPort")
                .and_then(Node::as_int)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    fault(
                        format!("{pf}.containerPort"),
                        "must be a port number (1-65535)",
                    )
                })?;
            let pname = p.get("name").and_then(Node::as_str).map(str::to_owned);
            ports.push((pf, pname, number));
        }
    }
    let first_port = containers
        .first()
        .and_then(|c| c.get("ports"))
        .and_then(Node::as_seq)
        .and_then(<[Node]>::first)
        .and_then(|p| p.get("containerPort"))
        .and_then(Node::as_int)
        .and_then(|n| u16::try_from(n).ok());
    let app_port = opts.app_port.or(first_port).unwrap_or(8080);
    for (what, port, option) in [
        ("TLS", opts.tls_port, "--tls-port"),
        ("admin", opts.admin_port, "--admin-port"),
    ] {
        if app_port == port {
            return Err(fault(
                format!("{containers_field}[0].ports"),
                format!("the app's port {app_port} is also portico's {what} port: choose another with {option}"),
            ));
        }
        if let Some((pf, ..)) = ports.iter().find(|(_, _, n)| *n == port) {
            return Err(fault(
                format!("{pf}.containerPort"),
                format!("{port} is portico's {what} port: choose another with {option}"),
            ));
        }
    }
    for taken in ["https", "admin"] {
        if let Some((pf, ..)) = ports.iter().find(|(_, n, _)| n.as_deref() == Some(taken)) {
            return Err(fault(
                format!("{pf}.name"),
                format!("{taken} is the name of portico's port: rename this one"),
            ));
        }
    }
    if let Some(volumes) = spec.get("volumes").and_then(Node::as_seq) {
        if let Some(i) = volumes
            .iter()
            .position(|v| v.get("name").and_then(Node::as_str) == Some(VOLUME))
        {
            return Err(fault(
                format!("{spec_field}.volumes[{i}].name"),
                format!("{VOLUME} is the name of portico's Secret volume: rename this one"),
            ));
        }
    }
    // The app container: the one that declares the app's port, else the first.
    let app_index = containers
        .iter()
        .position(|c| {
            c.get("ports").and_then(Node::as_seq).is_some_and(|ps| {
                ps.iter()
                    .any(|p| p.get("containerPort").and_then(Node::as_int) == Some(app_port.into()))
            })
        })
        .unwrap_or(0);
    let app_port_names: Vec<String> = ports
        .iter()
        .filter(|(_, _, n)| *n == app_port)
        .filter_map(|(_, name, _)| name.clone())
        .collect();
    let secret = match (&opts.secret, &name) {
        (Some(s), _) => s.clone(),
        (None, Some(n)) => format!("{}-tls", n.trim_end_matches('-')),
        (None, None) => {
            return Err(fault(
                "metadata.name",
                "missing: give the Secret's name with --secret",
            ))
        }
    };
    let labels = pod
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .map(|l| match l {
            Node::Map { entries, .. } => entries
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default();

    // From here on nothing fails: every shape was checked above.
    let pod = template;
    if let Some(annotations) = pod.map_at("metadata").and_then(|m| m.map_at("annotations")) {
        annotations.set(ANNOTATION, Node::str("true"));
    }
    let Some(spec) = pod.get_mut("spec") else {
        return Err(fault(format!("{prefix}spec"), "missing"));
    };
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Node::as_int);
    if grace.is_none_or(|g| g < GRACE_SECONDS) {
        spec.set("terminationGracePeriodSeconds", Node::plain(GRACE_SECONDS));
    }
    if opts.sidecar == Sidecar::Native {
        // portico stops only after the app has exited, so the delay that lets
        // endpoint removal reach every node must come before the app's SIGTERM.
        if let Some(app) = spec
            .get_mut("containers")
            .and_then(Node::as_seq_mut)
            .and_then(|c| c.get_mut(app_index))
        {
            let has_pre_stop = app
                .get("lifecycle")
                .and_then(|l| l.get("preStop"))
                .is_some();
            if !has_pre_stop {
                if let Some(lifecycle) = app.map_at("lifecycle") {
                    lifecycle.set(
                        "preStop",
                        Node::map(vec![(
                            "sleep",
                            Node::map(vec![("seconds", Node::plain(5))]),
                        )]),
                    );
                }
            }
        }
    }
    let list = match opts.sidecar {
        Sidecar::Native => "initContainers",
        Sidecar::Container => "containers",
    };
    // Last among the init containers: one that fetches or writes certificates
    // (a secret syncer) runs before portico looks for them.
    if let Some(list) = spec.seq_at(list) {
        list.push(container(opts, app_port));
    }
    if let Some(volumes) = spec.seq_at("volumes") {
        volumes.push(Node::map(vec![
            ("name", Node::str(VOLUME)),
            (
                "secret",
                Node::map(vec![("secretName", Node::str(&secret))]),
            ),
        ]));
    }
    let mode = match opts.sidecar {
        Sidecar::Native => "native sidecar",
        Sidecar::Container => "container",
    };
    let mut note = format!("injected ({mode}, app port {app_port}, Secret {secret})");
    if opts.sidecar == Sidecar::Container && matches!(kind.as_str(), "Job" | "CronJob") {
        note.push_str(&format!(
            "; a {kind}'s Pod ends only when portico exits too: have the app POST \
             http://127.0.0.1:{}/shutdown when it is done, or use the native sidecar",
            opts.admin_port
        ));
    }
    Ok(Outcome::Injected(Injected {
        namespace,
        labels,
        app_port,
        app_port_names,
        note,
    }))
}

/// A container that is portico already: by name, or by image.
fn is_portico(c: &Node) -> bool {
    let image = c.get("image").and_then(Node::as_str).unwrap_or_default();
    let repo = image.split(['@']).next().unwrap_or_default();
    let last = repo.rsplit('/').next().unwrap_or_default();
    let base = last.split(':').next().unwrap_or_default();
    c.get("name").and_then(Node::as_str) == Some(CONTAINER) || base == "portico"
}

fn env(name: &str, value: &str) -> Node {
    Node::map(vec![("name", Node::str(name)), ("value", Node::str(value))])
}

fn probe(path: &str, period: i64, timeout: i64, failures: i64) -> Node {
    Node::map(vec![
        (
            "httpGet",
            Node::map(vec![
                ("path", Node::str(path)),
                ("port", Node::str("admin")),
            ]),
        ),
        ("periodSeconds", Node::plain(period)),
        ("timeoutSeconds", Node::plain(timeout)),
        ("failureThreshold", Node::plain(failures)),
    ])
}

/// The portico container. Its settings are environment variables rather than
/// flags so that `--env` can replace any of them (a flag would win over it).
fn container(opts: &Options, app_port: u16) -> Node {
    let var = |opt: Opt| opt.spec().env();
    let mut vars: Vec<(String, String)> = vec![
        (var(Opt::Upstream), format!("http://127.0.0.1:{app_port}")),
        (var(Opt::Listen), format!("0.0.0.0:{}", opts.tls_port)),
        (
            var(Opt::AdminListen),
            format!("0.0.0.0:{}", opts.admin_port),
        ),
        (var(Opt::TlsDir), TLS_DIR.into()),
        // Endpoint removal takes a few seconds to reach every node's proxy.
        (var(Opt::DrainDelay), "5s".into()),
        (var(Opt::DrainTimeout), "30s".into()),
        (var(Opt::LogFormat), "json".into()),
    ];
    for (k, v) in &opts.env {
        match vars.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => vars.push((k.clone(), v.clone())),
        }
    }
    let mut fields = vec![
        ("name", Node::str(CONTAINER)),
        ("image", Node::str(&opts.image)),
    ];
    if opts.sidecar == Sidecar::Native {
        fields.push(("restartPolicy", Node::str("Always")));
    }
    fields.push((
        "env",
        Node::seq(vars.iter().map(|(k, v)| env(k, v)).collect()),
    ));
    fields.push((
        "ports",
        Node::seq(vec![
            Node::map(vec![
                ("name", Node::str("https")),
                ("containerPort", Node::plain(opts.tls_port)),
                ("protocol", Node::str("TCP")),
            ]),
            Node::map(vec![
                ("name", Node::str("admin")),
                ("containerPort", Node::plain(opts.admin_port)),
                ("protocol", Node::str("TCP")),
            ]),
        ]),
    ));
    if opts.sidecar == Sidecar::Native {
        // /healthz, not /readyz: /readyz needs the app, which the kubelet
        // starts only once this probe has passed.
        fields.push(("startupProbe", probe("/healthz", 1, 1, 30)));
    }
    fields.push(("livenessProbe", probe("/healthz", 10, 2, 3)));
    fields.push(("readinessProbe", probe("/readyz", 5, 2, 2)));
    fields.push((
        "resources",
        Node::map(vec![
            (
                "requests",
                Node::map(vec![
                    ("cpu", Node::str("100m")),
                    ("memory", Node::str("64Mi")),
                ]),
            ),
            (
                "limits",
                Node::map(vec![
                    ("cpu", Node::str("1")),
                    ("memory", Node::str("256Mi")),
                ]),
            ),
        ]),
    ));
    fields.push((
        "securityContext",
        Node::map(vec![
            ("runAsNonRoot", Node::plain(true)),
            ("runAsUser", Node::plain(65532)),
            ("runAsGroup", Node::plain(65532)),
            ("allowPrivilegeEscalation", Node::plain(false)),
            ("readOnlyRootFilesystem", Node::plain(true)),
            (
                "capabilities",
                Node::map(vec![("drop", Node::seq(vec![Node::str("ALL")]))]),
            ),
            (
                "seccompProfile",
                Node::map(vec![("type", Node::str("RuntimeDefault"))]),
            ),
        ]),
    ));
    // The whole Secret as a directory, never subPath: the kubelet never
    // updates a subPath mount, so a renewed certificate would not arrive.
    fields.push((
        "volumeMounts",
        Node::seq(vec![Node::map(vec![
            ("name", Node::str(VOLUME)),
            ("mountPath", Node::str(TLS_DIR)),
            ("readOnly", Node::plain(true)),
        ])]),
    ));
    Node::map(fields)
}

/// Points the ports of a Service that selects an injected workload at
/// portico's TLS port, where they targeted the app's port. Returns what
/// changed, one line each (empty: nothing).
pub fn retarget_service(svc: &mut Node, injected: &[Injected]) -> Vec<String> {
    if group(svc) != Some("") || kind(svc) != Some("Service") {
        return Vec::new();
    }
    let namespace = svc
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .map(str::to_owned);
    let selector: Vec<(String, String)> = match svc.get("spec").and_then(|s| s.get("selector")) {
        Some(Node::Map { entries, .. }) => entries
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        _ => return Vec::new(),
    };
    if selector.is_empty() {
        return Vec::new();
    }
    let selected: Vec<&Injected> = injected
        .iter()
        .filter(|w| {
            w.namespace == namespace
                && selector
                    .iter()
                    .all(|(k, v)| w.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .collect();
    if selected.is_empty() {
        return Vec::new();
    }
    let Some(ports) = svc
        .get_mut("spec")
        .and_then(|s| s.get_mut("ports"))
        .and_then(Node::as_seq_mut)
    else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for p in ports.iter_mut() {
        let Some(port) = p.get("port").and_then(Node::as_int) else {
            continue;
        };
        let targets_app = |w: &&Injected| match p.get("targetPort") {
            None => port == i64::from(w.app_port),
            Some(t) => match t.as_int() {
                Some(n) => n == i64::from(w.app_port),
                None => t
                    .as_str()
                    .is_some_and(|name| w.app_port_names.iter().any(|n| n == name)),
            },
        };
        if selected.iter().any(targets_app) {
            p.set("targetPort", Node::str("https"));
            changed.push(format!("port {port} now targets portico's https port"));
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::yaml;

    fn opts() -> Options {
        Options::default()
    }

    fn parse(text: &str) -> Node {
        match yaml::parse(text) {
            Ok(Some(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn workload_kinds_are_matched_by_group_and_kind() {
        for (api, kind, is) in [
            ("v1", "Pod", true),
            ("apps/v1", "Deployment", true),
            ("apps/v1", "StatefulSet", true),
            ("apps/v1", "DaemonSet", true),
            ("apps/v1", "ReplicaSet", true),
            ("batch/v1", "Job", true),
            ("batch/v1", "CronJob", true),
            // A custom resource that happens to be called Job is not one.
            ("batch.volcano.sh/v1alpha1", "Job", false),
            ("v1", "Service", false),
        ] {
            let obj = parse(&format!("apiVersion: {api}\nkind: {kind}\n"));
            assert_eq!(template_path(&obj).is_ok(), is, "{api} {kind}");
        }
    }

    #[test]
    fn the_app_port_is_the_first_containers_first_port_else_8080() {
        let with = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n    \
                    - name: x\n    - name: y\n      ports: [{containerPort: 9000}]\n";
        let mut obj = parse(with);
        // The first container declares no port: 8080, not the second's 9000.
        match inject(&mut obj, &opts()) {
            Ok(Outcome::Injected(i)) => assert_eq!(i.app_port, 8080),
            other => panic!("{other:?}"),
        }
        let mut obj = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n    \
             - name: x\n      ports: [{containerPort: 3000, name: web}]\n",
        );
        match inject(&mut obj, &opts()) {
            Ok(Outcome::Injected(i)) => {
                assert_eq!(
                    (i.app_port, i.app_port_names),
                    (3000, vec!["web".to_owned()])
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_service_is_retargeted_by_number_name_or_default() {
        let w = Injected {
            namespace: None,
            labels: vec![("app".into(), "web".into())],
            app_port: 8080,
            app_port_names: vec!["http".into()],
            note: String::new(),
        };
        let mut svc = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  selector: {app: web}\n  ports:\n    \
             - {port: 80, targetPort: 8080}\n    - {port: 81, targetPort: http}\n    - {port: 8080}\n    \
             - {port: 9090, targetPort: metrics}\n",
        );
        let changed = retarget_service(&mut svc, std::slice::from_ref(&w));
        assert_eq!(changed.len(), 3);
        let targets: Vec<Option<&str>> = svc
            .get("spec")
            .and_then(|s| s.get("ports"))
            .and_then(Node::as_seq)
            .unwrap_or_default()
            .iter()
            .map(|p| p.get("targetPort").and_then(Node::as_str))
            .collect();
        assert_eq!(
            targets,
            [Some("https"), Some("https"), Some("https"), Some("metrics")]
        );
        // Another namespace, or a selector that does not match: untouched.
        let mut other = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  selector: {app: web}\n  \
             ports: [{port: 80, targetPort: 8080}]\n",
        );
        assert!(retarget_service(&mut other, std::slice::from_ref(&w)).is_empty());
        let mut other = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  selector: {app: db}\n  \
             ports: [{port: 80, targetPort: 8080}]\n",
        );
        assert!(retarget_service(&mut other, &[w]).is_empty());
    }
}
