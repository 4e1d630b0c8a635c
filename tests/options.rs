//! The option table (`portico::config::OPTIONS`) against what portico does
//! with it: every option gives the same configuration from a flag, from its
//! `PORTICO_*` variable and from its TOML key; `--help` shows every row; names
//! the table lacks are refused (flags, keys) or ignored (variables) as they
//! always were; and a start-up error about a file names the option that gave it.
mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};

use portico::app::{self, StartError};
use portico::config::{ArgsError, Config, Mode, OptionSpec, OPTIONS};
use support::Pki;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// A value unlike the default for one option: its flag values (a repeatable
/// option's variable joins them with commas), the same as a TOML value, and
/// the flags it needs beside it; and a second value unlike the first.
struct Sample {
    name: &'static str,
    values: &'static [&'static str],
    other: &'static str,
    toml: &'static str,
    needs: &'static [&'static str],
}

const CA: &[&str] = &["--client-ca", "/etc/portico/ca.pem"];

const SAMPLES: &[Sample] = &[
    Sample {
        name: "listen",
        values: &["127.0.0.1:18443"],
        other: "127.0.0.1:28443",
        toml: r#""127.0.0.1:18443""#,
        needs: &[],
    },
    Sample {
        name: "upstream",
        values: &["h2c://127.0.0.1:50051"],
        other: "unix:/run/app.sock",
        toml: r#""h2c://127.0.0.1:50051""#,
        needs: &[],
    },
    Sample {
        name: "route",
        values: &[
            "/metrics=http://127.0.0.1:9090",
            "api.example.com/=unix:/run/a.sock",
        ],
        other: "/other=http://127.0.0.1:3",
        toml: r#"["/metrics=http://127.0.0.1:9090", "api.example.com/=unix:/run/a.sock"]"#,
        needs: &[],
    },
    Sample {
        name: "tls-cert",
        values: &["/etc/portico/a.crt"],
        other: "/etc/portico/b.crt",
        toml: r#""/etc/portico/a.crt""#,
        needs: &["--tls-key", "/etc/portico/a.key"],
    },
    Sample {
        name: "tls-key",
        values: &["/etc/portico/a.key"],
        other: "/etc/portico/b.key",
        toml: r#""/etc/portico/a.key""#,
        needs: &["--tls-cert", "/etc/portico/a.crt"],
    },
    Sample {
        name: "tls-dir",
        values: &["/etc/tls/a", "/etc/tls/b"],
        other: "/etc/tls/c",
        toml: r#"["/etc/tls/a", "/etc/tls/b"]"#,
        needs: &[],
    },
    Sample {
        name: "client-ca",
        values: &["/etc/portico/ca.pem"],
        other: "/etc/portico/other-ca.pem",
        toml: r#""/etc/portico/ca.pem""#,
        needs: &[],
    },
    Sample {
        name: "client-auth",
        values: &["optional"],
        other: "required",
        toml: r#""optional""#,
        needs: CA,
    },
    Sample {
        name: "allow-san",
        values: &["dns:*.shop.svc", "uri:spiffe://cluster.local/ns/shop/*"],
        other: "cn:web",
        toml: r#"["dns:*.shop.svc", "uri:spiffe://cluster.local/ns/shop/*"]"#,
        needs: CA,
    },
    Sample {
        name: "tls-min-version",
        values: &["1.3"],
        other: "1.2",
        toml: r#""1.3""#,
        needs: &[],
    },
    Sample {
        name: "proxy-protocol",
        values: &["on"],
        other: "off",
        toml: "true",
        needs: &[],
    },
    Sample {
        name: "proxy-protocol-from",
        values: &["10.0.0.0/8", "2001:db8::/32"],
        other: "192.0.2.0/24",
        toml: r#"["10.0.0.0/8", "2001:db8::/32"]"#,
        needs: &["--proxy-protocol", "on"],
    },
    Sample {
        name: "admin-listen",
        values: &["off"],
        other: "127.0.0.1:29901",
        toml: "false",
        needs: &[],
    },
    Sample {
        name: "redirect-listen",
        values: &["127.0.0.1:18080"],
        other: "127.0.0.1:28080",
        toml: r#""127.0.0.1:18080""#,
        needs: &[],
    },
    Sample {
        name: "ready-check",
        values: &["http:/healthz"],
        other: "none",
        toml: r#""http:/healthz""#,
        needs: &[],
    },
    Sample {
        name: "connect-timeout",
        values: &["750ms"],
        other: "17s",
        toml: r#""750ms""#,
        needs: &[],
    },
    Sample {
        name: "handshake-timeout",
        values: &["3s"],
        other: "17s",
        toml: r#""3s""#,
        needs: &[],
    },
    Sample {
        name: "header-read-timeout",
        values: &["0"],
        other: "7s",
        toml: "0",
        needs: &[],
    },
    Sample {
        name: "request-timeout",
        values: &["2m"],
        other: "17s",
        toml: r#""2m""#,
        needs: &[],
    },
    Sample {
        name: "body-timeout",
        values: &["90s"],
        other: "17s",
        toml: r#""90s""#,
        needs: &[],
    },
    Sample {
        name: "idle-timeout",
        values: &["1h"],
        other: "17s",
        toml: r#""1h""#,
        needs: &[],
    },
    Sample {
        name: "max-connections",
        values: &["500"],
        other: "5",
        toml: "500",
        needs: &[],
    },
    Sample {
        name: "max-requests-in-flight",
        values: &["64"],
        other: "5",
        toml: "64",
        needs: &[],
    },
    Sample {
        name: "max-request-body",
        values: &["10MiB"],
        other: "2048",
        toml: r#""10MiB""#,
        needs: &[],
    },
    Sample {
        name: "max-header-bytes",
        values: &["32768"],
        other: "2048",
        toml: "32768",
        needs: &[],
    },
    Sample {
        name: "drain-delay",
        values: &["5s"],
        other: "17s",
        toml: r#""5s""#,
        needs: &[],
    },
    Sample {
        name: "drain-timeout",
        values: &["45s"],
        other: "17s",
        toml: r#""45s""#,
        needs: &[],
    },
    Sample {
        // No machine this runs on has 97 CPUs to make it the default.
        name: "workers",
        values: &["97"],
        other: "5",
        toml: "97",
        needs: &[],
    },
    Sample {
        name: "cert-poll-interval",
        values: &["2s"],
        other: "17s",
        toml: r#""2s""#,
        needs: &[],
    },
    Sample {
        name: "cert-watch",
        values: &["off"],
        other: "on",
        toml: "false",
        needs: &[],
    },
    Sample {
        name: "log-format",
        values: &["json"],
        other: "text",
        toml: r#""json""#,
        needs: &[],
    },
    Sample {
        name: "log-level",
        values: &["debug,hyper=info"],
        other: "warn",
        toml: r#""debug,hyper=info""#,
        needs: &[],
    },
    Sample {
        name: "access-log",
        values: &["off"],
        other: "on",
        toml: "false",
        needs: &[],
    },
];

/// Parses `args` (after the program name) with exactly `env` for environment.
fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<(Mode, Config), ArgsError> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut all = vec!["portico"];
    all.extend_from_slice(args);
    Config::from_args_env(all, |name| env.get(name).cloned())
}

/// The configuration, as text (`Config`'s Debug shows every field).
#[track_caller]
fn config(args: &[&str], env: &[(&str, &str)]) -> String {
    match parse_env(args, env) {
        Ok((_, c)) => format!("{c:?}"),
        Err(ArgsError::Config(e)) => panic!("{args:?} {env:?}: {e}"),
        Err(ArgsError::Clap(e)) => panic!("{args:?} {env:?}: {e}"),
    }
}

fn spec(name: &str) -> &'static OptionSpec {
    OptionSpec::find(name).unwrap_or_else(|| panic!("--{name} is not in the table"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_str().expect("utf-8 path").to_string()
}

#[test]
fn every_option_has_a_sample_and_every_sample_an_option() {
    let table: Vec<&str> = OPTIONS
        .iter()
        .filter(|s| s.in_file)
        .map(|s| s.name)
        .collect();
    let samples: Vec<&str> = SAMPLES.iter().map(|s| s.name).collect();
    assert_eq!(table, samples, "SAMPLES follows OPTIONS, row for row");
    for s in SAMPLES {
        assert_eq!(spec(s.name).repeatable, s.values.len() > 1, "--{}", s.name);
    }
}

#[test]
fn every_option_round_trips_through_flag_environment_and_toml() {
    let dir = tempfile::tempdir().expect("tempdir");
    for s in SAMPLES {
        let spec = spec(s.name);
        let flag = format!("--{}", spec.name);

        let mut args: Vec<&str> = s.needs.to_vec();
        for v in s.values {
            args.extend([flag.as_str(), v]);
        }
        let by_flag = config(&args, &[]);

        let joined = s.values.join(",");
        let by_env = config(s.needs, &[(spec.env().as_str(), joined.as_str())]);

        let file = write(
            dir.path(),
            &format!("{}.toml", spec.name),
            &format!("{} = {}\n", spec.name, s.toml),
        );
        let mut args: Vec<&str> = s.needs.to_vec();
        args.extend(["--config", &file]);
        let by_file = config(&args, &[]);

        // Unlike the default (where the flags it needs stand alone).
        if let Ok((_, c)) = parse_env(s.needs, &[]) {
            assert_ne!(
                by_flag,
                format!("{c:?}"),
                "--{} {:?} changes nothing",
                s.name,
                s.values
            );
        }
        let mut args: Vec<&str> = s.needs.to_vec();
        args.extend([flag.as_str(), s.other]);
        assert_ne!(
            by_flag,
            config(&args, &[]),
            "--{}: {:?} against {}",
            s.name,
            s.values,
            s.other
        );
        assert_eq!(by_env, by_flag, "{} against --{}", spec.env(), s.name);
        assert_eq!(by_file, by_flag, "TOML key {} against --{}", s.name, s.name);
    }
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for s in SAMPLES {
        let spec = spec(s.name);
        let flag = format!("--{}", spec.name);
        let with = |extra: &[&str], env: &[(&str, &str)]| {
            let mut args: Vec<&str> = s.needs.to_vec();
            args.extend_from_slice(extra);
            config(&args, env)
        };
        let file = write(
            dir.path(),
            &format!("{}.toml", spec.name),
            &format!("{} = {}\n", spec.name, s.toml),
        );
        let var = spec.env();
        let joined = s.values.join(",");
        let (sample_env, other_env) =
            ([(var.as_str(), joined.as_str())], [(var.as_str(), s.other)]);
        let sample = with(&[], &sample_env);
        let other = with(&[], &other_env);
        assert_ne!(
            sample, other,
            "--{}: {:?} against {}",
            s.name, s.values, s.other
        );

        let other_flag = [flag.as_str(), s.other];
        assert_eq!(
            with(&other_flag, &sample_env),
            other,
            "flag over variable: --{}",
            s.name
        );
        let mut args = other_flag.to_vec();
        args.extend(["--config", &file]);
        assert_eq!(with(&args, &[]), other, "flag over file: --{}", s.name);
        assert_eq!(
            with(&["--config", &file], &other_env),
            other,
            "variable over file: --{}",
            s.name
        );
        assert_eq!(
            with(&["--config", &file], &[]),
            sample,
            "the file: --{}",
            s.name
        );
    }
}

#[test]
fn the_config_file_itself_from_its_flag_or_its_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "p.toml",
        "connect-timeout = \"7s\"\nworkers = 97\n",
    );
    let by_flag = config(&["--config", &file], &[]);
    assert_ne!(by_flag, config(&[], &[]));
    assert_eq!(config(&[], &[("PORTICO_CONFIG", file.as_str())]), by_flag);
    // A variable set to nothing is unset, as for every option.
    assert_eq!(config(&[], &[("PORTICO_CONFIG", "")]), config(&[], &[]));
}

#[test]
fn names_the_table_lacks_are_refused_or_ignored_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A TOML key: refused, naming the file and the key.
    for key in ["listen-port", "config", "Listen", "tls_dir"] {
        let file = write(dir.path(), "k.toml", &format!("{key} = \"x\"\n"));
        match parse_env(&["--config", &file], &[]) {
            Err(ArgsError::Config(e)) => {
                assert_eq!(e.option, "config");
                assert_eq!(
                    e.to_string(),
                    format!("--config: {file}: unknown key '{key}'")
                );
            }
            other => panic!("key {key}: {:?}", other.map(|(m, _)| m)),
        }
    }
    // A flag: clap refuses it.
    match parse_env(&["--listen-port", "1"], &[]) {
        Err(ArgsError::Clap(e)) => {
            assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
            assert!(e.to_string().contains("--listen-port"), "{e}");
        }
        other => panic!("{:?}", other.map(|(m, _)| m)),
    }
    // A variable: not read.
    let defaults = config(&[], &[]);
    assert_eq!(defaults, format!("{:?}", Config::defaults()));
    for var in [
        "PORTICO_LISTEN_PORT",
        "PORTICO_listen",
        "LISTEN",
        "PORTICO_TLSDIR",
    ] {
        assert_eq!(config(&[], &[(var, "127.0.0.1:1")]), defaults, "{var}");
    }
}

/// Runs the binary with exactly `env`; its exit code, stdout and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn portico");
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    (status.code(), out, err)
}

#[test]
fn help_shows_every_row_of_the_table_once() {
    let (code, help, _) = run(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for spec in OPTIONS {
        let head = format!("--{} <{}>", spec.name, spec.value_name);
        let lines: Vec<&str> = help
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{head} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{head}:\n{help}");
        let want = format!("{} [env: {}=]", spec.help_line(), spec.env());
        assert!(
            lines[0].ends_with(&want),
            "{:?} should end {want:?}",
            lines[0]
        );
    }
    let longs = help
        .lines()
        .filter(|l| l.trim_start().starts_with("--"))
        .count();
    assert_eq!(
        longs,
        OPTIONS.len(),
        "a long option not in the table:\n{help}"
    );
}

#[test]
fn the_binary_reads_each_variable_as_its_flag() {
    // What `portico check` prints: listeners, routes, the default upstream.
    let cases: &[(&str, &str, &[&str])] = &[
        ("listen", "127.0.0.1:18443", &[]),
        ("upstream", "h2c://127.0.0.1:50051", &[]),
        ("route", "/a=http://127.0.0.1:1,/b=unix:/run/b.sock", &[]),
        ("tls-min-version", "1.3", &[]),
        ("proxy-protocol", "on", &[]),
        (
            "proxy-protocol-from",
            "10.0.0.0/8,192.0.2.7",
            &["--proxy-protocol", "on"],
        ),
        ("admin-listen", "127.0.0.1:19901", &[]),
        ("redirect-listen", "127.0.0.1:18080", &[]),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    // A certificate of its own: the self-signed default is new each run.
    let (crt, key) = Pki::new("options test CA")
        .server(&["a.example.com"])
        .write_to(&dir.path().join("a"));
    let (crt, key) = (crt.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    for (name, value, needs) in cases {
        let spec = spec(name);
        let mut base = vec!["check", "--tls-cert", crt, "--tls-key", key];
        base.extend_from_slice(needs);
        let (code, default, err) = run(&base, &[]);
        assert_eq!(code, Some(0), "{err}");

        let mut flags = base.clone();
        let flag = format!("--{name}");
        for v in value.split(',') {
            flags.extend([flag.as_str(), v]);
        }
        let (code, by_flag, err) = run(&flags, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_ne!(by_flag, default, "--{name} {value} shows in check");

        let (code, by_env, err) = run(&base, &[(spec.env().as_str(), value)]);
        assert_eq!(
            (code, by_env),
            (Some(0), by_flag.clone()),
            "{}: {err}",
            spec.env()
        );

        let toml = if spec.repeatable {
            let items: Vec<String> = value.split(',').map(|v| format!("{v:?}")).collect();
            format!("[{}]", items.join(", "))
        } else {
            format!("{value:?}")
        };
        let file = write(dir.path(), "c.toml", &format!("{name} = {toml}\n"));
        let mut args = base.clone();
        args.extend(["--config", &file]);
        let (code, by_file, err) = run(&args, &[]);
        assert_eq!((code, by_file), (Some(0), by_flag), "TOML {name}: {err}");
    }
}

/// The option a start-up error names, from the in-process loader.
fn load_error(args: &[&str]) -> &'static str {
    let cfg = match parse_env(args, &[]) {
        Ok((_, c)) => c,
        Err(ArgsError::Config(e)) => panic!("{args:?}: {e}"),
        Err(ArgsError::Clap(e)) => panic!("{args:?}: {e}"),
    };
    match app::load(&cfg) {
        Ok(_) => panic!("{args:?} loaded"),
        Err(StartError::Option { option, message }) => {
            assert!(!message.is_empty());
            option
        }
        Err(e) => panic!("{args:?}: not an option's error: {e}"),
    }
}

#[test]
fn a_bad_file_names_the_option_that_gave_it() {
    support::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("options test CA");
    let (a_crt, a_key) = pki
        .server(&["a.example.com"])
        .write_to(&dir.path().join("a"));
    let (_, b_key) = pki
        .server(&["b.example.com"])
        .write_to(&dir.path().join("b"));
    let (a_crt, a_key, b_key) = (
        a_crt.to_str().expect("utf-8"),
        a_key.to_str().expect("utf-8"),
        b_key.to_str().expect("utf-8"),
    );
    let good_dir = dir.path().join("a");
    let good_dir = good_dir.to_str().expect("utf-8");
    let garbage = write(dir.path(), "garbage.pem", "this is not PEM at all\n");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().expect("utf-8");
    let half = dir.path().join("half");
    std::fs::create_dir_all(&half).expect("mkdir");
    std::fs::copy(a_crt, half.join("tls.crt")).expect("copy");
    let half = half.to_str().expect("utf-8");
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);

    let cases: &[(&[&str], &str)] = &[
        (&["--tls-cert", missing, "--tls-key", a_key], "tls-cert"),
        (&["--tls-cert", &garbage, "--tls-key", a_key], "tls-cert"),
        (&["--tls-cert", a_crt, "--tls-key", missing], "tls-key"),
        (&["--tls-cert", a_crt, "--tls-key", &garbage], "tls-key"),
        (&["--tls-cert", a_crt, "--tls-key", b_key], "tls-key"),
        (&["--tls-dir", half], "tls-dir"),
        (&["--tls-dir", good_dir, "--tls-dir", missing], "tls-dir"),
        (
            &["--tls-cert", a_crt, "--tls-key", a_key, "--tls-dir", half],
            "tls-dir",
        ),
        (
            &[
                "--tls-cert",
                a_crt,
                "--tls-key",
                a_key,
                "--client-ca",
                &garbage,
            ],
            "client-ca",
        ),
        (
            &["--tls-dir", good_dir, "--client-ca", missing],
            "client-ca",
        ),
        (&["--client-ca", a_key], "client-ca"),
    ];
    for (args, option) in cases {
        assert_eq!(load_error(args), *option, "{args:?}");
    }
    // The same files in their right places load.
    let (_, cfg) = parse_env(
        &[
            "--tls-cert",
            a_crt,
            "--tls-key",
            a_key,
            "--tls-dir",
            good_dir,
            "--client-ca",
            &ca,
        ],
        &[],
    )
    .expect("parses");
    assert!(app::load(&cfg).is_ok());

    // And the binary says so on its first line, exit 2.
    for (args, option) in [cases[3], cases[5], cases[8]] {
        let mut all = vec!["check", "--admin-listen", "off"];
        all.extend_from_slice(args);
        let (code, _, err) = run(&all, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        let want = format!("portico: --{option}: ");
        assert!(
            err.starts_with(&want),
            "{args:?}: {err:?} should start {want:?}"
        );
    }
}
