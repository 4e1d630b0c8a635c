//! `portico inject` from the outside (docs/reference.md, "`portico
//! inject`"): the real binary on the fixtures in tests/it/inject/, its output
//! compared with the golden files beside them, validated offline against the
//! Kubernetes schemas deploy/validate.py uses (tests/it/inject/check.py: 1.30
//! and the newest the kubernetes-validate package ships, strict), and injected
//! a second time to show that nothing changes. Bad input: exit 2, the exact
//! message, nothing on stdout.
//!
//! `PORTICO_BLESS=1 cargo test --test it inject::` rewrites the golden files;
//! read the diff before committing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/inject")
}

/// What one run did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `portico inject ARGS` in tests/it/inject/ with `stdin` as standard input
/// and a clean environment (inject must need none of portico's variables).
fn inject(args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(BIN)
        .arg("inject")
        .args(args)
        .current_dir(dir())
        .env_clear()
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portico");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for portico");
    let _ = writer.join();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// The Python packages check.py needs; their absence fails under CI=true.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import yaml, kubernetes_validate"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with PyYAML and kubernetes-validate is needed: \
             python3 -m pip install -r deploy/requirements.txt"
        );
        eprintln!("SKIPPED schema validation: python3 -m pip install -r deploy/requirements.txt");
    }
    ok
}

/// Validates a manifest stream with tests/it/inject/check.py and returns what
/// PyYAML (a YAML 1.1 reader, like kubectl's) read: `docs`, `validated`, ...
fn validate(manifests: &str) -> Option<Value> {
    if !python_ready() {
        return None;
    }
    let mut child = Command::new("python3")
        .arg(dir().join("check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut input = child.stdin.take().expect("stdin");
    let text = manifests.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for python3");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "schema validation failed: {}\n{manifests}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("check.py prints JSON"))
}

/// Injects `input` (a file in tests/it/inject/) with `args`, compares the output
/// with `golden`, injects the output again (the same must come out), and
/// validates it. Returns the parsed documents and stderr.
fn golden(input: &str, args: &[&str], golden: &str) -> (Option<Value>, String) {
    let mut all = args.to_vec();
    all.push(input);
    let out = inject(&all, "");
    assert_eq!(out.code, Some(0), "{input}: {}", out.stderr);
    let path = dir().join(golden);
    if std::env::var_os("PORTICO_BLESS").is_some() {
        std::fs::write(&path, &out.stdout).expect("write golden file");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (PORTICO_BLESS=1 writes it)", path.display()));
    assert_eq!(out.stdout, want, "{input}: output differs from {golden}");

    // Idempotent: the output, injected again (from stdin), comes out the same.
    let again = inject(args, &out.stdout);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        again.stdout, out.stdout,
        "{input}: a second inject changed it"
    );
    assert!(
        !again.stderr.contains(": injected ("),
        "{input}: injected twice: {}",
        again.stderr
    );

    let parsed = validate(&out.stdout);
    if let Some(v) = &parsed {
        // Kubernetes 1.30 and the newest the package ships (1.37 with the pinned one).
        let versions: Vec<&str> = v["versions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(versions.first(), Some(&"1.30"), "{versions:?}");
        assert!(versions.len() == 2, "validated against {versions:?} only");
    }
    (parsed, out.stderr)
}

/// The Pod spec of a workload document as PyYAML read it.
fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

fn pod_annotations(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("Pod") => &doc["metadata"]["annotations"],
        Some("CronJob") => {
            &doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]
        }
        _ => &doc["spec"]["template"]["metadata"]["annotations"],
    }
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env_of(c: &Value, name: &str) -> Option<String> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// Everything the reference asks of an injected Pod, with the default options, checked
/// on what a YAML 1.1 reader makes of the output.
fn assert_injected_native(doc: &Value, app_port: u16, secret: &str) {
    let spec = pod_spec(doc);
    let portico = container(&spec["initContainers"], "portico");
    assert_eq!(portico["restartPolicy"], "Always");
    assert_eq!(portico["image"], "ghcr.io/example/portico:0.1.0");
    assert!(
        spec["containers"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["name"] != "portico")),
        "portico also among containers"
    );
    let sc = &portico["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        env_of(portico, "PORTICO_UPSTREAM").as_deref(),
        Some(format!("http://127.0.0.1:{app_port}").as_str())
    );
    assert_eq!(
        env_of(portico, "PORTICO_TLS_DIR").as_deref(),
        Some("/etc/portico/tls")
    );
    assert_eq!(
        env_of(portico, "PORTICO_DRAIN_DELAY").as_deref(),
        Some("5s")
    );
    let mounts = portico["volumeMounts"].as_array().expect("volumeMounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["mountPath"], "/etc/portico/tls");
    assert_eq!(mounts[0]["readOnly"], true);
    assert!(mounts[0].get("subPath").is_none(), "subPath: {}", mounts[0]);
    let volume = spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == mounts[0]["name"]))
        .expect("the mounted volume");
    assert_eq!(volume["secret"]["secretName"], secret);
    assert_eq!(portico["ports"][0]["name"], "https");
    assert_eq!(portico["ports"][0]["containerPort"], 8443);
    assert_eq!(portico["ports"][1]["name"], "admin");
    assert_eq!(portico["ports"][1]["containerPort"], 9901);
    assert_eq!(portico["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(portico["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(portico["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(portico["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(portico["startupProbe"]["httpGet"]["path"], "/healthz");
    assert!(spec["terminationGracePeriodSeconds"].as_i64() >= Some(45));
    assert_eq!(pod_annotations(doc)["portico/injected"], "true");
}

fn doc<'a>(v: &'a Value, kind: &str, name: &str) -> &'a Value {
    v["docs"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        })
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

#[test]
fn inject_deployment_native_sidecar_and_its_service_moves_to_https() {
    let (v, stderr) = golden("deployment.in.yaml", &[], "deployment.out.yaml");
    assert_eq!(
        stderr,
        "portico inject: Deployment/web: injected (native sidecar, app port 3000, Secret web-tls)\n\
         portico inject: Service/web: port 80 now targets portico's https port\n"
    );
    let Some(v) = v else { return };
    assert_eq!(
        v["validated"],
        serde_json::json!(["Deployment/web", "Service/web", "Service/db"])
    );
    let deploy = doc(&v, "Deployment", "web");
    assert_injected_native(deploy, 3000, "web-tls");
    // The app keeps serving while endpoint removal spreads (native: it stops first).
    let app = container(&pod_spec(deploy)["containers"], "web");
    assert_eq!(app["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    // Untouched values keep their meaning: "yes" stays a string.
    assert_eq!(app["env"][0]["value"], "yes");
    let svc = doc(&v, "Service", "web");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], "metrics");
    let db = doc(&v, "Service", "db");
    assert_eq!(db["spec"]["ports"][0].get("targetPort"), None);
}

#[test]
fn inject_unchanged_documents_keep_their_text_and_comments() {
    let input = std::fs::read_to_string(dir().join("deployment.in.yaml")).expect("fixture");
    let out = inject(&["-"], &input);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The Service of another app, byte for byte, comment included, last.
    let db = &input[input.find("# Selects another app").expect("fixture")..];
    assert!(out.stdout.ends_with(db), "{}", out.stdout);
    // A changed document keeps the comment above it and its place.
    assert!(out.stdout.starts_with(
        "# A web app and its Service, plus a Service of another app that must not move.\napiVersion: apps/v1\nkind: Deployment\n"
    ));
    // A file of non-workloads (a custom resource with containers, a
    // directive, a `...` end, a block scalar holding `---`) is all passed through.
    let (v, stderr) = golden("passthrough.in.yaml", &[], "passthrough.in.yaml");
    assert_eq!(stderr, "");
    if let Some(v) = v {
        assert_eq!(v["validated"], serde_json::json!(["ConfigMap/settings"]));
        assert_eq!(
            v["not_validated"],
            serde_json::json!(["Certificate/web", "Deployment/not-apps"])
        );
        assert_eq!(doc(&v, "ConfigMap", "settings")["data"]["mode"], "0440");
    }
}

#[test]
fn inject_statefulset_keeps_a_longer_grace_period() {
    let (v, _) = golden("statefulset.in.yaml", &[], "statefulset.out.yaml");
    let Some(v) = v else { return };
    let sts = doc(&v, "StatefulSet", "store");
    assert_injected_native(sts, 7000, "store-tls");
    assert_eq!(pod_spec(sts)["terminationGracePeriodSeconds"], 120);
    // No targetPort: it was the port itself, the app's; now portico's.
    assert_eq!(
        doc(&v, "Service", "store")["spec"]["ports"][0]["targetPort"],
        "https"
    );
}

#[test]
fn inject_daemonset_keeps_its_annotations() {
    let (v, _) = golden("daemonset.in.yaml", &[], "daemonset.out.yaml");
    let Some(v) = v else { return };
    let ds = doc(&v, "DaemonSet", "agent");
    assert_injected_native(ds, 8125, "agent-tls");
    assert_eq!(pod_annotations(ds)["example.com/owner"], "platform");
}

#[test]
fn inject_replicaset_with_app_port_option() {
    let (v, stderr) = golden(
        "replicaset.in.yaml",
        &["--app-port", "5678"],
        "replicaset.out.yaml",
    );
    assert!(stderr.contains("app port 5678"), "{stderr}");
    let Some(v) = v else { return };
    assert_injected_native(doc(&v, "ReplicaSet", "echo"), 5678, "echo-tls");
}

#[test]
fn inject_job_and_cronjob_get_a_native_sidecar() {
    let (v, _) = golden("job.in.yaml", &[], "job.out.yaml");
    if let Some(v) = v {
        assert_injected_native(doc(&v, "Job", "report"), 8000, "report-tls");
    }
    let (v, _) = golden("cronjob.in.yaml", &[], "cronjob.out.yaml");
    if let Some(v) = v {
        let cj = doc(&v, "CronJob", "nightly");
        assert_injected_native(cj, 8080, "nightly-tls");
        // The multi-line script survives as the same string.
        assert_eq!(
            container(&pod_spec(cj)["containers"], "nightly")["command"][2],
            "echo starting\nexec /bin/nightly\n"
        );
    }
}

#[test]
fn inject_pod_and_numeric_target_port() {
    let (v, _) = golden("pod.in.yaml", &[], "pod.out.yaml");
    let Some(v) = v else { return };
    assert_injected_native(doc(&v, "Pod", "solo"), 8080, "solo-tls");
    assert_eq!(
        doc(&v, "Service", "solo")["spec"]["ports"][0]["targetPort"],
        "https"
    );
}

#[test]
fn inject_list_items() {
    let (v, stderr) = golden("list.in.yaml", &[], "list.out.yaml");
    assert_eq!(
        stderr,
        "portico inject: Deployment/api: injected (native sidecar, app port 8081, Secret api-tls)\n\
         portico inject: Service/api: port 80 now targets portico's https port\n"
    );
    let Some(v) = v else { return };
    assert_eq!(
        v["validated"],
        serde_json::json!(["Deployment/api", "Service/api", "ConfigMap/api-config"])
    );
    let items = &v["docs"][0]["items"];
    assert_injected_native(&items[0], 8081, "api-tls");
    assert_eq!(items[1]["spec"]["ports"][0]["targetPort"], "https");
    assert_eq!(items[2]["data"]["mode"], "0440");
}

#[test]
fn inject_several_containers_without_ports() {
    let (v, _) = golden("multi-container.in.yaml", &[], "multi-container.out.yaml");
    let Some(v) = v else { return };
    let d = doc(&v, "Deployment", "worker");
    assert_injected_native(d, 8080, "worker-tls");
    let spec = pod_spec(d);
    // portico comes after the existing init container, which still runs first.
    assert_eq!(spec["initContainers"][0]["name"], "migrate");
    assert_eq!(spec["initContainers"][1]["name"], "portico");
    // The app's own preStop is kept, the shipper gets none.
    let app = container(&spec["containers"], "app");
    assert_eq!(
        app["lifecycle"]["preStop"],
        serde_json::json!({"exec": {"command": ["/bin/drain"]}})
    );
    assert!(container(&spec["containers"], "log-shipper")
        .get("lifecycle")
        .is_none());
    assert_eq!(spec["volumes"][0]["name"], "logs");
    // Written back as 0440, which kubectl (YAML 1.1) reads as octal: 288.
    assert_eq!(spec["volumes"][1]["configMap"]["defaultMode"], 288);
}

#[test]
fn inject_pod_that_has_portico_already_is_unchanged() {
    let (v, stderr) = golden("already.in.yaml", &[], "already.in.yaml");
    assert_eq!(
        stderr,
        "portico inject: Pod/app: has portico already, left as it was\n"
    );
    if let Some(v) = v {
        assert_eq!(v["validated"], serde_json::json!(["Pod/app"]));
    }
}

#[test]
fn inject_json_input_gives_yaml_output() {
    let (v, _) = golden("app.in.json", &[], "app.out.yaml");
    let out = std::fs::read_to_string(dir().join("app.out.yaml")).expect("golden");
    assert!(
        out.starts_with("apiVersion: apps/v1\nkind: Deployment\n"),
        "{out}"
    );
    let Some(v) = v else { return };
    let d = doc(&v, "Deployment", "json-app");
    assert_injected_native(d, 5000, "json-app-tls");
    // JSON strings that YAML 1.1 would read otherwise stay strings.
    let app = container(&pod_spec(d)["containers"], "app");
    assert_eq!(
        app["env"][0],
        serde_json::json!({"name": "ON", "value": "on"})
    );
    assert_eq!(
        app["env"][1],
        serde_json::json!({"name": "N", "value": "1"})
    );
}

#[test]
fn inject_sidecar_container_and_every_option() {
    let args = [
        "--sidecar",
        "container",
        "--secret",
        "web-cert",
        "--app-port",
        "9090",
        "--image",
        "registry.example.com/portico:1.2",
        "--tls-port",
        "9443",
        "--admin-port",
        "9902",
        "--env",
        "PORTICO_LOG_LEVEL=debug",
        "--env",
        "PORTICO_DRAIN_DELAY=10s",
    ];
    let (v, _) = golden("deployment.in.yaml", &args, "deployment-container.out.yaml");
    let Some(v) = v else { return };
    let d = doc(&v, "Deployment", "web");
    let spec = pod_spec(d);
    assert!(spec.get("initContainers").is_none(), "{spec}");
    let portico = container(&spec["containers"], "portico");
    assert!(portico.get("restartPolicy").is_none());
    assert!(portico.get("startupProbe").is_none());
    assert_eq!(portico["image"], "registry.example.com/portico:1.2");
    assert_eq!(
        env_of(portico, "PORTICO_UPSTREAM").as_deref(),
        Some("http://127.0.0.1:9090")
    );
    assert_eq!(
        env_of(portico, "PORTICO_LISTEN").as_deref(),
        Some("0.0.0.0:9443")
    );
    assert_eq!(
        env_of(portico, "PORTICO_ADMIN_LISTEN").as_deref(),
        Some("0.0.0.0:9902")
    );
    // --env replaces a setting of ours in place and adds the rest.
    assert_eq!(
        env_of(portico, "PORTICO_DRAIN_DELAY").as_deref(),
        Some("10s")
    );
    assert_eq!(
        env_of(portico, "PORTICO_LOG_LEVEL").as_deref(),
        Some("debug")
    );
    assert_eq!(portico["ports"][0]["containerPort"], 9443);
    assert_eq!(portico["ports"][1]["containerPort"], 9902);
    let volume = spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "portico-tls"))
        .expect("the Secret volume");
    assert_eq!(volume["secret"]["secretName"], "web-cert");
    // The app's port is now 9090 (its `metrics` port): that is what moves.
    let svc = doc(&v, "Service", "web");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], "https");
    // No preStop for the app: a plain container gets SIGTERM with portico,
    // and a cluster old enough to need this mode may lack the sleep action.
    assert!(container(&spec["containers"], "web")
        .get("lifecycle")
        .is_none());
}

#[test]
fn inject_reads_several_files_as_one_stream() {
    let stdin = "# from stdin\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let out = inject(&["pod.in.yaml", "-", "job.in.yaml"], stdin);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let pod = std::fs::read_to_string(dir().join("pod.out.yaml")).expect("golden");
    let job = std::fs::read_to_string(dir().join("job.out.yaml")).expect("golden");
    assert_eq!(out.stdout, format!("{pod}---\n{stdin}---\n{job}"));
    if let Some(v) = validate(&out.stdout) {
        assert_eq!(v["docs"].as_array().map(Vec::len), Some(4));
    }
}

#[test]
fn inject_example_in_deploy_validates() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/app.yaml");
    let path = example.to_str().expect("utf-8 path");
    let app_injected =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/app.injected.yaml");
    let (v, stderr) = golden(path, &[], app_injected.to_str().expect("utf-8 path"));
    assert_eq!(
        stderr,
        "portico inject: Deployment/shop: injected (native sidecar, app port 8080, Secret shop-tls)\n\
         portico inject: Service/shop: port 80 now targets portico's https port\n"
    );
    if let Some(v) = v {
        assert_injected_native(doc(&v, "Deployment", "shop"), 8080, "shop-tls");
    }
    // deploy/README.md shows this run: every line it adds is in the output.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/README.md"))
            .expect("deploy/README.md");
    let section = readme
        .split("## Adding portico to an existing app: `portico inject`")
        .nth(1)
        .expect("the inject section in deploy/README.md");
    let diff = section
        .split("```diff\n")
        .nth(1)
        .and_then(|d| d.split("```").next())
        .expect("a diff block in the inject section");
    let injected = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/app.injected.yaml"),
    )
    .expect("app.injected.yaml");
    let mut added = 0;
    for line in diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
    {
        assert!(
            injected.lines().any(|l| l == &line[1..]),
            "deploy/README.md shows a line the output lacks: {line}"
        );
        added += 1;
    }
    assert!(added > 20, "only {added} added lines in the README's diff");
}

/// One bad input: the file's text, the arguments, the message.
struct Bad {
    what: &'static str,
    input: &'static str,
    args: &'static [&'static str],
    message: &'static str,
}

#[test]
fn inject_bad_input_exits_2_naming_document_and_field_with_nothing_on_stdout() {
    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n";
    let cases = [
        Bad {
            what: "neither YAML nor JSON",
            input: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n{\"kind\": \"Pod\",\n",
            args: &["-"],
            message: "<stdin>: document 2: neither YAML nor JSON: while parsing a node, did not find expected node content (line 6, column 1)",
        },
        Bad {
            what: "tab indentation",
            input: "kind: Pod\nspec:\n\tcontainers: []\n",
            args: &[],
            message: "<stdin>: document 1: neither YAML nor JSON: tabs disallowed within this context (block indentation) (line 3, column 2)",
        },
        Bad {
            what: "a workload without containers",
            input: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers: []\n",
            args: &[],
            message: "<stdin>: document 1 (Deployment/web): spec.template.spec.containers: no containers: there is no app to put portico in front of",
        },
        Bad {
            what: "containers where the template goes",
            input: "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  containers:\n    - name: db\n",
            args: &[],
            message: "<stdin>: document 1 (StatefulSet/db): spec.containers: a StatefulSet's containers go in spec.template.spec.containers",
        },
        Bad {
            what: "a CronJob with a Job's template",
            input: "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: n\nspec:\n  schedule: '@daily'\n  template:\n    spec:\n      containers: [{name: a}]\n",
            args: &[],
            message: "<stdin>: document 1 (CronJob/n): spec.template: a CronJob's Pod template goes in spec.jobTemplate.spec.template",
        },
        Bad {
            what: "a Pod with a template",
            input: "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  template:\n    spec:\n      containers: [{name: a}]\n",
            args: &[],
            message: "<stdin>: document 1 (Pod/p): spec.template: a Pod has no template: its containers go in spec.containers",
        },
        Bad {
            what: "no template at all",
            input: DEPLOY,
            args: &[],
            message: "<stdin>: document 1 (Deployment/web): spec.template: missing: a Deployment needs a Pod template",
        },
        Bad {
            what: "a List item",
            input: "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: ConfigMap\n  - apiVersion: batch/v1\n    kind: Job\n    metadata: {name: j}\n    spec:\n      template:\n        spec: {}\n",
            args: &[],
            message: "<stdin>: document 1 (Job/j): items[1].spec.template.spec.containers: no containers: there is no app to put portico in front of",
        },
        Bad {
            what: "a container without a name",
            input: "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - image: x\n",
            args: &[],
            message: "<stdin>: document 1 (Pod/p): spec.containers[0].name: missing",
        },
        Bad {
            what: "a port that is portico's",
            input: "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n      ports: [{containerPort: 8080}, {containerPort: 8443}]\n",
            args: &[],
            message: "<stdin>: document 1 (Pod/p): spec.containers[0].ports[1].containerPort: 8443 is portico's TLS port: choose another with --tls-port",
        },
        Bad {
            what: "a port name that is portico's",
            input: "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n      ports: [{containerPort: 8080, name: https}]\n",
            args: &[],
            message: "<stdin>: document 1 (Pod/p): spec.containers[0].ports[0].name: https is the name of portico's port: rename this one",
        },
        Bad {
            what: "not an object",
            input: "just some words\n",
            args: &[],
            message: "<stdin>: document 1: not a Kubernetes object (a mapping with apiVersion and kind)",
        },
        Bad {
            what: "a duplicate key",
            input: "apiVersion: v1\nkind: Pod\nkind: Service\n",
            args: &[],
            message: "<stdin>: document 1: neither YAML nor JSON: duplicate key kind (line 3, column 1)",
        },
        Bad {
            what: "a missing file",
            input: "",
            args: &["no-such-file.yaml"],
            message: "no-such-file.yaml: cannot read: No such file or directory (os error 2)",
        },
        Bad {
            what: "colliding ports",
            input: "",
            args: &["--tls-port", "9901"],
            message: "--admin-port: 9901 is also --tls-port",
        },
        Bad {
            what: "a bad Secret name",
            input: "",
            args: &["--secret", "My_Cert"],
            message: "",
        },
    ];
    for case in &cases {
        let out = inject(case.args, case.input);
        assert_eq!(out.code, Some(2), "{}: {}", case.what, out.stderr);
        assert_eq!(out.stdout, "", "{}: something on stdout", case.what);
        if case.message.is_empty() {
            // clap's own message names the option.
            assert!(
                out.stderr.contains("--secret <NAME>") && out.stderr.contains("RFC 1123"),
                "{}: {}",
                case.what,
                out.stderr
            );
        } else {
            assert_eq!(
                out.stderr,
                format!("portico inject: {}\n", case.message),
                "{}",
                case.what
            );
        }
    }
}

#[test]
fn inject_a_later_bad_document_leaves_stdout_empty() {
    // The first document alone would inject fine: nothing may be written
    // before the whole input is known to be good.
    let input = std::fs::read_to_string(dir().join("pod.in.yaml")).expect("fixture")
        + "---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec: {template: {spec: {}}}\n";
    let out = inject(&[], &input);
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "portico inject: <stdin>: document 3 (DaemonSet/d): spec.template.spec.containers: no containers: there is no app to put portico in front of\n"
    );
}

#[test]
fn inject_needs_no_proxy_option_and_lists_in_help() {
    // PORTICO_* variables that would stop the proxy from starting are ignored.
    let out = Command::new(BIN)
        .args(["inject", "-"])
        .current_dir(dir())
        .env("PORTICO_LISTEN", "not an address")
        .stdin(Stdio::null())
        .output()
        .expect("run portico");
    assert_eq!(out.status.code(), Some(0));
    let help = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run portico");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("inject") && help.contains("Add portico to the workloads"),
        "{help}"
    );
    let help = inject(&["--help"], "");
    assert_eq!(help.code, Some(0));
    for option in [
        "--secret",
        "--app-port",
        "--image",
        "--tls-port",
        "--admin-port",
        "--sidecar",
        "--env",
    ] {
        assert!(help.stdout.contains(option), "{option}: {}", help.stdout);
    }
    assert!(!help.stdout.contains("--listen"), "{}", help.stdout);
}

#[test]
fn inject_schema_check_rejects_what_kubernetes_would() {
    // The validation the golden tests rely on does bite: an unknown field, and
    // a string where 1.30 wants an integer.
    if !python_ready() {
        return;
    }
    for bad in [
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b, sidecar: true}]\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b}]\n  terminationGracePeriodSeconds: '45'\n",
    ] {
        let out = Command::new("python3")
            .arg(dir().join("check.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().expect("stdin").write_all(bad.as_bytes())?;
                c.wait_with_output()
            })
            .expect("run check.py");
        assert_eq!(out.status.code(), Some(1), "accepted:\n{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Pod/p against Kubernetes 1.30"));
    }
}

#[test]
fn inject_any_prefix_of_a_fixture_is_an_answer_not_a_panic_and_is_idempotent() {
    // Prefixes of every fixture (cut mid-document, mid-key, mid-quote; every
    // 5th byte, which keeps this to seconds in a debug build) are either
    // injected, with a second pass changing nothing, or refused with an
    // error; never a panic.
    let opts = portico::inject::Options::default();
    let mut ok = 0;
    let mut refused = 0;
    for entry in std::fs::read_dir(dir()).expect("tests/it/inject") {
        let path = entry.expect("entry").path();
        let name = path.to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("fixture");
        for cut in (0..=text.len())
            .step_by(5)
            .filter(|i| text.is_char_boundary(*i))
        {
            let source = |t: &str| portico::inject::Source {
                name: "x".into(),
                text: t.into(),
            };
            match portico::inject::inject(&[source(&text[..cut])], &opts) {
                Ok(first) => {
                    ok += 1;
                    let second = portico::inject::inject(&[source(&first.output)], &opts)
                        .unwrap_or_else(|e| panic!("{name} cut at {cut}: second pass: {e}"));
                    assert_eq!(
                        second.output, first.output,
                        "{name} cut at {cut}: the second pass changed it"
                    );
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(
        ok > 300 && refused > 300,
        "{ok} injected, {refused} refused"
    );
}

/// `portico help inject` is `portico inject --help`: inject's own usage, none
/// of the proxy's options.
#[test]
fn help_inject_prints_injects_own_help() {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("run portico");
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        String::from_utf8(o.stdout).expect("utf-8")
    };
    let help = run(&["help", "inject"]);
    assert!(
        help.contains("Usage: portico inject [OPTIONS] [FILE]..."),
        "{help}"
    );
    for proxy_only in ["--upstream", "--listen", "--max-connections"] {
        assert!(!help.contains(proxy_only), "{proxy_only} in:\n{help}");
    }
    assert_eq!(help, run(&["inject", "--help"]));
}
