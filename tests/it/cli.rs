//! The command line from the outside (docs/reference.md, "Commands",
//! "Options", "Signals and exit codes"): the real binary run with a clean
//! environment, its exit codes, what stderr names, and the precedence flag >
//! `PORTICO_*` > TOML file > default, observed through `portico check` and,
//! for what `check` does not print, through `Config::from_args` in-process.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::Pki;
use portico::config::{ArgsError, Config, Mode};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// Every option of the reference's table, plus `--config`.
const DOCUMENTED_OPTIONS: &[&str] = &[
    "config",
    "listen",
    "upstream",
    "route",
    "tls-cert",
    "tls-key",
    "tls-dir",
    "client-ca",
    "client-auth",
    "allow-san",
    "tls-min-version",
    "proxy-protocol",
    "proxy-protocol-from",
    "admin-listen",
    "redirect-listen",
    "ready-check",
    "connect-timeout",
    "handshake-timeout",
    "header-read-timeout",
    "request-timeout",
    "body-timeout",
    "idle-timeout",
    "max-connections",
    "max-requests-in-flight",
    "max-request-body",
    "max-header-bytes",
    "drain-delay",
    "drain-timeout",
    "workers",
    "cert-poll-interval",
    "log-format",
    "log-level",
    "access-log",
];

/// What one run of the binary did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs portico with `args` and only `env` for environment (plus PATH and
/// RUST_BACKTRACE=1, so a panic would be loud); kills it after `limit`.
fn run_for(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn portico");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = t_err.join().unwrap_or_default();
            panic!("portico {args:?} still running after {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    Out {
        code: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        took,
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Out {
    run_for(args, env, Duration::from_secs(20))
}

fn assert_no_panic(o: &Out) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !o.stderr.contains(bad),
            "stderr shows a panic ({bad}):\n{}",
            o.stderr
        );
    }
}

/// Exit 2, no panic, and stderr holds every one of `needles`.
#[track_caller]
fn assert_exit2(o: &Out, needles: &[&str]) {
    assert_eq!(
        o.code,
        Some(2),
        "want exit 2; stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert_no_panic(o);
    for n in needles {
        assert!(
            o.stderr.contains(n),
            "stderr should name {n:?}:\n{}",
            o.stderr
        );
    }
}

/// `portico check` succeeded; returns its stdout.
#[track_caller]
fn check_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let o = run(&all, env);
    assert_eq!(o.code, Some(0), "check {args:?} failed:\n{}", o.stderr);
    assert_no_panic(&o);
    o.stdout
}

/// The address on the `tls` line of a `check` summary.
fn tls_line(summary: &str) -> String {
    summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("tls "))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|| panic!("no tls line in:\n{summary}"))
}

/// The route names (as `--route` spells them) listed in a `check` summary, `default` excluded.
fn routes(summary: &str) -> Vec<String> {
    summary
        .lines()
        .skip_while(|l| l.trim() != "routes:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "default")
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn help_lists_every_documented_option_and_exits_0() {
    let o = run(&["--help"], &[]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for name in DOCUMENTED_OPTIONS {
        let flag = format!("--{name} ");
        assert!(
            o.stdout.contains(&flag),
            "--help lacks {flag:?}:\n{}",
            o.stdout
        );
    }
    // README's one addition to the reference's table.
    assert!(
        o.stdout.contains("--cert-watch "),
        "--help lacks --cert-watch"
    );
    assert!(
        o.stdout.contains("check"),
        "--help lacks the check subcommand"
    );
    let o = run(&["check", "--help"], &[]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("--listen "),
        "check --help lacks the options"
    );
}

#[test]
fn version_prints_name_and_version() {
    let o = run(&["--version"], &[]);
    assert_eq!(o.code, Some(0));
    assert_eq!(o.stdout.trim(), "portico 0.1.0");
}

#[test]
fn bad_values_exit_2_naming_the_option() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--bogus"], &["--bogus"]),
        (&["check", "--bogus"], &["--bogus"]),
        (&["--connect-timeout", "5x"], &["--connect-timeout", "5x"]),
        (&["--drain-delay", "10"], &["--drain-delay", "unit"]),
        (
            &["--max-header-bytes", "12XB"],
            &["--max-header-bytes", "12XB"],
        ),
        (
            &["--max-request-body", "lots"],
            &["--max-request-body", "lots"],
        ),
        (&["--listen", "nonsense"], &["--listen", "nonsense"]),
        (&["--admin-listen", "127.0.0.1"], &["--admin-listen"]),
        (&["--redirect-listen", "x:80"], &["--redirect-listen"]),
        (&["--upstream", "ftp://x"], &["--upstream", "ftp://x"]),
        (&["--route", "nopath"], &["--route", "nopath"]),
        (
            &[
                "--route",
                "/ok=http://127.0.0.1:1",
                "--route",
                "/bad=ftp://x",
            ],
            &["--route", "ftp://x"],
        ),
        (
            &["--client-ca", "/dev/null", "--allow-san", "email:a@b"],
            &["--allow-san", "email:a@b"],
        ),
        (
            &["--allow-san", "dns:a.example.com"],
            &["--allow-san", "--client-ca"],
        ),
        (
            &["--client-auth", "optional"],
            &["--client-auth", "--client-ca"],
        ),
        (
            &["--client-ca", "/dev/null", "--client-auth", "sometimes"],
            &["--client-auth", "sometimes"],
        ),
        (&["--tls-cert", "/tmp/x.crt"], &["--tls-key"]),
        (&["--tls-key", "/tmp/x.key"], &["--tls-cert"]),
        (
            &["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:2"],
            &["--listen"],
        ),
        (&["--tls-min-version", "1.1"], &["--tls-min-version", "1.1"]),
        (&["--ready-check", "icmp"], &["--ready-check", "icmp"]),
        (&["--max-connections", "0"], &["--max-connections"]),
        (&["--workers", "many"], &["--workers", "many"]),
        (&["--cert-poll-interval", "0"], &["--cert-poll-interval"]),
        (&["--log-format", "xml"], &["--log-format", "xml"]),
        (&["--access-log", "maybe"], &["--access-log", "maybe"]),
    ];
    for (args, needles) in cases {
        // Should validation let one through, it must not take a real port.
        // (A scalar flag given twice is refused by clap, so only add what the
        // case does not set itself.)
        let mut all = Vec::new();
        for (flag, value) in [("--listen", "127.0.0.1:0"), ("--admin-listen", "off")] {
            if !args.contains(&flag) {
                all.extend([flag, value]);
            }
        }
        all.extend_from_slice(args);
        let o = run_for(&all, &[], Duration::from_secs(10));
        assert_exit2(&o, needles);
        // check refuses the same configuration the same way.
        if args[0] != "check" {
            let mut c = vec!["check"];
            c.extend_from_slice(&all);
            assert_exit2(&run(&c, &[]), needles);
        }
    }
}

#[test]
fn a_bad_value_from_the_environment_or_file_names_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = run(&["check"], &[("PORTICO_CONNECT_TIMEOUT", "soon")]);
    assert_exit2(
        &o,
        &["--connect-timeout", "PORTICO_CONNECT_TIMEOUT", "soon"],
    );

    let file = write(dir.path(), "p.toml", "connect-timeout = \"soon\"\n");
    let o = run(&["check", "--config", s(&file)], &[]);
    assert_exit2(&o, &["--connect-timeout", s(&file), "soon"]);

    // --config itself from the environment.
    let o = run(&["check"], &[("PORTICO_CONFIG", s(&file))]);
    assert_exit2(&o, &["--connect-timeout", s(&file)]);
}

#[test]
fn bad_toml_files_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let invalid = write(dir.path(), "invalid.toml", "listen = \n");
    let unknown = write(
        dir.path(),
        "unknown.toml",
        "listen = \"127.0.0.1:0\"\nlisten-port = 8443\n",
    );
    let typed = write(
        dir.path(),
        "typed.toml",
        "route = \"/a=http://127.0.0.1:1\"\n",
    );
    let float = write(dir.path(), "float.toml", "connect-timeout = 1.5\n");
    let table = write(dir.path(), "table.toml", "[listen]\naddr = \"x\"\n");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--config", s(&invalid)], vec![s(&invalid), "TOML"]),
        (
            vec!["--config", s(&unknown)],
            vec![s(&unknown), "listen-port"],
        ),
        (
            vec!["--config", s(&typed)],
            vec![s(&typed), "--route", "array"],
        ),
        (
            vec!["--config", s(&float)],
            vec![s(&float), "--connect-timeout"],
        ),
        (vec!["--config", s(&table)], vec![s(&table), "--listen"]),
        (
            vec!["--config", "/nonexistent/portico.toml"],
            vec!["/nonexistent/portico.toml"],
        ),
    ];
    for (args, needles) in &cases {
        assert_exit2(&run(args, &[]), needles);
        let mut c = vec!["check"];
        c.extend_from_slice(args);
        assert_exit2(&run(&c, &[]), needles);
    }
}

#[test]
fn bad_certificate_files_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("cli test CA");
    let a = pki.server(&["a.example.com"]);
    let b = pki.server(&["b.example.com"]);
    let (a_crt, a_key) = a.write_to(&dir.path().join("a"));
    let (_, b_key) = b.write_to(&dir.path().join("b"));
    let garbage = write(dir.path(), "garbage.pem", "this is not PEM at all\n");
    let missing = dir.path().join("missing.crt");
    let nope = dir.path().join("nope");
    let half = dir.path().join("half");
    std::fs::create_dir_all(&half).expect("mkdir");
    write(&half, "tls.crt", &a.cert_pem);

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // Unreadable certificate: the message names the path.
        (
            vec!["--tls-cert", s(&missing), "--tls-key", s(&a_key)],
            vec![s(&missing)],
        ),
        // Not PEM, as certificate and as key.
        (
            vec!["--tls-cert", s(&garbage), "--tls-key", s(&a_key)],
            vec!["--tls-cert", s(&garbage)],
        ),
        (
            vec!["--tls-cert", s(&a_crt), "--tls-key", s(&garbage)],
            vec!["--tls-key", s(&garbage), "key"],
        ),
        // A key that belongs to another certificate: named as the key's fault.
        (
            vec!["--tls-cert", s(&a_crt), "--tls-key", s(&b_key)],
            vec!["--tls-key", s(&a_crt), "does not match"],
        ),
        // A Secret directory without tls.key.
        (vec!["--tls-dir", s(&half)], vec!["--tls-dir", "tls.key"]),
        (vec!["--tls-dir", s(&nope)], vec!["--tls-dir", "nope"]),
        // Client CA bundles.
        (
            vec!["--client-ca", s(&garbage)],
            vec!["--client-ca", s(&garbage)],
        ),
        (
            vec!["--client-ca", s(&missing)],
            vec!["--client-ca", s(&missing)],
        ),
    ];
    for (args, needles) in &cases {
        let mut all = vec!["--listen", "127.0.0.1:0", "--admin-listen", "off"];
        all.extend_from_slice(args);
        assert_exit2(&run_for(&all, &[], Duration::from_secs(10)), needles);
        let mut c = vec!["check"];
        c.extend_from_slice(&all);
        assert_exit2(&run(&c, &[]), needles);
    }
}

#[test]
fn invalid_configuration_opens_no_port_and_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("cli test CA");
    let (a_crt, _) = pki
        .server(&["a.example.com"])
        .write_to(&dir.path().join("a"));
    let (_, b_key) = pki
        .server(&["b.example.com"])
        .write_to(&dir.path().join("b"));
    let bad_option: &[&str] = &["--connect-timeout", "5x"];
    let bad_pair: &[&str] = &["--tls-cert", s(&a_crt), "--tls-key", s(&b_key)];
    for bad in [bad_option, bad_pair] {
        // The test holds the three ports while portico runs: one that bound a
        // port before checking its configuration would exit 1 (address in
        // use, see the next test), not 2; and no other test can take a port
        // that was only free a moment ago.
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<String> = held
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect();
        let mut args = vec![
            "--listen",
            &addrs[0],
            "--admin-listen",
            &addrs[1],
            "--redirect-listen",
            &addrs[2],
        ];
        args.extend_from_slice(bad);
        let o = run_for(&args, &[], Duration::from_secs(10));
        assert_exit2(&o, &[]);
        assert!(o.took < Duration::from_secs(2), "exit took {:?}", o.took);
        assert!(
            !o.stderr.contains("serving") && !o.stderr.contains("cannot listen"),
            "it got as far as the listeners:\n{}",
            o.stderr
        );
    }
}

#[test]
fn an_address_in_use_exits_1_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = taken.local_addr().expect("addr");
    let a = addr.to_string();

    let o = run(&["--listen", &a, "--admin-listen", "off"], &[]);
    assert_eq!(o.code, Some(1), "stderr:\n{}", o.stderr);
    assert_no_panic(&o);
    assert!(
        o.stderr.contains("--listen") && o.stderr.contains(&a),
        "{}",
        o.stderr
    );

    let o = run(&["--listen", "127.0.0.1:0", "--admin-listen", &a], &[]);
    assert_eq!(o.code, Some(1), "stderr:\n{}", o.stderr);
    assert!(
        o.stderr.contains("--admin-listen") && o.stderr.contains(&a),
        "{}",
        o.stderr
    );

    let o = run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--redirect-listen",
            &a,
        ],
        &[],
    );
    assert_eq!(o.code, Some(1), "stderr:\n{}", o.stderr);
    assert!(
        o.stderr.contains("--redirect-listen") && o.stderr.contains(&a),
        "{}",
        o.stderr
    );
    drop(taken);
}

#[test]
fn precedence_of_a_scalar_flag_env_file_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "p.toml",
        "listen = \"127.0.0.1:1001\"\nadmin-listen = \"127.0.0.1:2001\"\n",
    );
    let f = s(&file);

    // Default.
    let out = check_ok(&[], &[]);
    assert_eq!(tls_line(&out), "0.0.0.0:8443");
    assert!(out.contains("admin     0.0.0.0:9901"), "{out}");
    // File over default.
    let out = check_ok(&["--config", f], &[]);
    assert_eq!(tls_line(&out), "127.0.0.1:1001");
    assert!(out.contains("admin     127.0.0.1:2001"), "{out}");
    // Environment over file (the file's other key still applies).
    let env = [("PORTICO_LISTEN", "127.0.0.1:1002")];
    let out = check_ok(&["--config", f], &env);
    assert_eq!(tls_line(&out), "127.0.0.1:1002");
    assert!(out.contains("admin     127.0.0.1:2001"), "{out}");
    // Flag over environment, before or after `check`.
    let out = check_ok(&["--config", f, "--listen", "127.0.0.1:1003"], &env);
    assert_eq!(tls_line(&out), "127.0.0.1:1003");
    let o = run(
        &["--listen", "127.0.0.1:1004", "check", "--config", f],
        &env,
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(tls_line(&o.stdout), "127.0.0.1:1004");
    // `off` from the environment beats an address in the file.
    let out = check_ok(&["--config", f], &[("PORTICO_ADMIN_LISTEN", "off")]);
    assert!(out.contains("admin     off"), "{out}");
    // An empty environment variable is unset: the file applies.
    let out = check_ok(&["--config", f], &[("PORTICO_LISTEN", "")]);
    assert_eq!(tls_line(&out), "127.0.0.1:1001");
    // tls-min-version from the file shows on the tls line.
    let v13 = write(dir.path(), "v13.toml", "tls-min-version = \"1.3\"\n");
    assert!(check_ok(&["--config", s(&v13)], &[]).contains("TLS 1.3+"));
    let out = check_ok(
        &["--config", s(&v13)],
        &[("PORTICO_TLS_MIN_VERSION", "1.2")],
    );
    assert!(out.contains("TLS 1.2+"), "{out}");
}

#[test]
fn precedence_of_a_repeatable_whole_list_from_the_first_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "p.toml",
        "route = [\"/f1=http://127.0.0.1:11\", \"/f2=http://127.0.0.1:12\"]\n",
    );
    let f = s(&file);
    let env = [(
        "PORTICO_ROUTE",
        "/a=http://127.0.0.1:1,/b=http://127.0.0.1:2",
    )];

    assert!(routes(&check_ok(&[], &[])).is_empty());
    assert_eq!(
        routes(&check_ok(&["--config", f], &[])),
        ["/f1=http://127.0.0.1:11", "/f2=http://127.0.0.1:12"]
    );
    assert_eq!(
        routes(&check_ok(&["--config", f], &env)),
        ["/a=http://127.0.0.1:1", "/b=http://127.0.0.1:2"]
    );
    assert_eq!(
        routes(&check_ok(
            &[
                "--config",
                f,
                "--route",
                "/c=http://127.0.0.1:3",
                "--route",
                "api.example.com/=h2c://127.0.0.1:4"
            ],
            &env
        )),
        [
            "/c=http://127.0.0.1:3",
            "api.example.com/=h2c://127.0.0.1:4"
        ]
    );
    // An empty PORTICO_ROUTE is unset, not an empty list hiding the file's.
    assert_eq!(
        routes(&check_ok(&["--config", f], &[("PORTICO_ROUTE", "")])),
        ["/f1=http://127.0.0.1:11", "/f2=http://127.0.0.1:12"]
    );
    // The default upstream follows the same order.
    let up = write(
        dir.path(),
        "up.toml",
        "upstream = \"h2c://127.0.0.1:50051\"\n",
    );
    let out = check_ok(&["--config", s(&up)], &[]);
    assert!(out.contains("-> h2c://127.0.0.1:50051"), "{out}");
    let out = check_ok(
        &["--config", s(&up)],
        &[("PORTICO_UPSTREAM", "unix:/run/app.sock")],
    );
    assert!(
        out.contains("-> unix:/run/app.sock") && !out.contains("50051"),
        "{out}"
    );
}

const ALL_TYPES_TOML: &str = r#"
listen = "127.0.0.1:18443"
upstream = "http://127.0.0.1:8081"
route = ["/metrics=http://127.0.0.1:9090", "api.example.com/=h2c://127.0.0.1:50051"]
tls-min-version = "1.3"
admin-listen = "127.0.0.1:19901"
redirect-listen = "off"
ready-check = "http:/healthz"
connect-timeout = "750ms"
handshake-timeout = "3s"
header-read-timeout = "0"
request-timeout = "2m"
body-timeout = 0
idle-timeout = "90s"
max-connections = 500
max-requests-in-flight = 64
max-request-body = "10MiB"
max-header-bytes = 32768
drain-delay = "5s"
drain-timeout = "45s"
workers = 3
cert-poll-interval = "2s"
log-format = "json"
log-level = "debug,hyper=info"
access-log = false
cert-watch = false
"#;

#[test]
fn a_file_with_every_toml_type_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "all.toml", ALL_TYPES_TOML);
    let out = check_ok(&["--config", s(&file)], &[]);
    assert_eq!(tls_line(&out), "127.0.0.1:18443");
    assert!(out.contains("TLS 1.3+"), "{out}");
    assert!(out.contains("admin     127.0.0.1:19901"), "{out}");
    assert_eq!(
        routes(&out),
        [
            "/metrics=http://127.0.0.1:9090",
            "api.example.com/=h2c://127.0.0.1:50051"
        ]
    );
    assert!(out.contains("-> http://127.0.0.1:8081"), "{out}");
}

#[test]
fn check_reports_a_good_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("cli test CA");
    let secret = dir.path().join("secret");
    let (crt, key) = pki
        .server(&["app.example.com", "www.example.com"])
        .write_to(&secret);
    for args in [
        vec!["--tls-dir", s(&secret)],
        vec!["--tls-cert", s(&crt), "--tls-key", s(&key)],
    ] {
        let out = check_ok(&args, &[]);
        assert!(out.contains("app.example.com, www.example.com"), "{out}");
        assert!(out.contains("not after"), "{out}");
        assert!(out.contains(s(&crt)), "the summary names the file:\n{out}");
        assert!(!out.contains("self-signed"), "{out}");
    }
    // Two Secrets: both listed, in order.
    let other = dir.path().join("other");
    pki.server(&["other.example.com"]).write_to(&other);
    let out = check_ok(&["--tls-dir", s(&secret), "--tls-dir", s(&other)], &[]);
    let (i, j) = (
        out.find("app.example.com").expect("first"),
        out.find("other.example.com").expect("second"),
    );
    assert!(i < j, "{out}");
    // With a client CA the summary says so.
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let out = check_ok(
        &[
            "--tls-dir",
            s(&secret),
            "--client-ca",
            s(&ca),
            "--client-auth",
            "optional",
        ],
        &[],
    );
    assert!(out.contains(s(&ca)), "{out}");
}

#[test]
fn check_refuses_an_expired_or_not_yet_valid_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("cli test CA");
    let expired = dir.path().join("expired");
    pki.leaf(&["old.example.com"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })
    .write_to(&expired);
    let o = run(&["check", "--tls-dir", s(&expired)], &[]);
    assert_exit2(&o, &["expired", s(&expired)]);

    let future = dir.path().join("future");
    pki.leaf(&["new.example.com"], |p| {
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    })
    .write_to(&future);
    let o = run(&["check", "--tls-dir", s(&future)], &[]);
    assert_exit2(&o, &[s(&future), "not valid before"]);
}

#[test]
fn check_without_certificates_uses_the_self_signed_default() {
    let out = check_ok(&["--listen", "127.0.0.1:0"], &[]);
    assert!(out.contains("self-signed"), "{out}");
    assert!(out.contains("localhost"), "{out}");
    assert!(out.contains("not after"), "{out}");
}

fn parse_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<(Mode, Config), ArgsError> {
    // The environment is given, not the process's: tests share that one.
    let mut all = vec!["portico"];
    all.extend_from_slice(args);
    Config::from_args_env(all, |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

fn parse(args: &[&str], env: &[(&str, &str)]) -> Config {
    match parse_with_env(args, env) {
        Ok((_, c)) => c,
        Err(ArgsError::Config(e)) => panic!("{args:?}: {e}"),
        Err(ArgsError::Clap(e)) => panic!("{args:?}: {e}"),
    }
}

#[test]
fn in_process_precedence_for_what_check_does_not_print() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "p.toml",
        "connect-timeout = \"7s\"\nmax-request-body = 2048\naccess-log = false\nworkers = 3\n",
    );
    let f = s(&file);
    let secs = Duration::from_secs;

    let c = parse(&[], &[]);
    assert_eq!(c.connect_timeout, secs(5));
    assert_eq!(c.max_request_body, 0);
    assert!(c.access_log);

    let c = parse(&["--config", f], &[]);
    assert_eq!(c.connect_timeout, secs(7));
    assert_eq!(c.max_request_body, 2048);
    assert!(!c.access_log);
    assert_eq!(c.workers, 3);

    let env = [
        ("PORTICO_CONNECT_TIMEOUT", "8s"),
        ("PORTICO_MAX_REQUEST_BODY", "1MiB"),
        ("PORTICO_ACCESS_LOG", "on"),
    ];
    let c = parse(&["--config", f], &env);
    assert_eq!(c.connect_timeout, secs(8));
    assert_eq!(c.max_request_body, 1 << 20);
    assert!(c.access_log);
    assert_eq!(c.workers, 3, "the file's other keys still apply");

    let c = parse(
        &[
            "--config",
            f,
            "--connect-timeout",
            "9s",
            "--max-request-body",
            "64KiB",
            "--access-log",
            "off",
        ],
        &env,
    );
    assert_eq!(c.connect_timeout, secs(9));
    assert_eq!(c.max_request_body, 64 << 10);
    assert!(!c.access_log);

    // `check` mode, with the options on either side of it.
    let (mode, c) = parse_with_env(&["--connect-timeout", "1s", "check"], &[]).expect("parses");
    assert_eq!(mode, Mode::Check);
    assert_eq!(c.connect_timeout, secs(1));
    let (mode, c) = parse_with_env(&["check", "--connect-timeout", "2s"], &env).expect("parses");
    assert_eq!(mode, Mode::Check);
    assert_eq!(c.connect_timeout, secs(2));
}

#[test]
fn in_process_every_toml_type_lands_in_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "all.toml", ALL_TYPES_TOML);
    let c = parse(&["--config", s(&file)], &[]);
    let ms = Duration::from_millis;
    assert_eq!(c.connect_timeout, ms(750));
    assert_eq!(c.handshake_timeout, ms(3_000));
    assert_eq!(c.header_read_timeout, Duration::ZERO);
    assert_eq!(c.request_timeout, ms(120_000));
    assert_eq!(c.body_timeout, Duration::ZERO);
    assert_eq!(c.idle_timeout, ms(90_000));
    assert_eq!(c.max_connections, 500);
    assert_eq!(c.max_requests_in_flight, 64);
    assert_eq!(c.max_request_body, 10 << 20);
    assert_eq!(c.max_header_bytes, 32768);
    assert_eq!(c.drain_delay, ms(5_000));
    assert_eq!(c.drain_timeout, ms(45_000));
    assert_eq!(c.workers, 3);
    assert_eq!(c.cert_poll_interval, ms(2_000));
    assert_eq!(c.log_format, portico::config::LogFormat::Json);
    assert_eq!(c.log_level, "debug,hyper=info");
    assert!(!c.access_log);
    assert!(!c.watch_files);
    assert!(c.tls13_only);
    assert_eq!(c.redirect_listen, None);
    assert_eq!(
        c.ready_check,
        portico::config::ReadyCheck::Http("/healthz".into())
    );
    assert_eq!(c.routes.len(), 2);
}

#[test]
fn check_into_a_closed_pipe_does_not_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "--admin-listen", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // `portico check | head -0`: the reader goes away before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "panic on a closed stdout:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(0));
}
