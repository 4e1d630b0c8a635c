//! The validated configuration: flag, then `PORTICO_*` environment, then the TOML
//! file, then the default. Everything is parsed here, once, before any socket is
//! opened; an error names the option and where its value came from.

pub mod cli;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::proxy_protocol::Cidr;
use crate::routing::{Route, UpstreamAddr};
use crate::tls::san::SanPattern;
use units::{parse_duration, parse_size};

/// A configuration error: which option, from where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The option's name without dashes, or the file.
    pub option: String,
    /// Where the bad value came from.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin.is_empty() {
            write!(f, "--{}: {}", self.option, self.message)
        } else {
            write!(
                f,
                "--{} (from {}): {}",
                self.option, self.origin, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Client certificate policy with `--client-ca`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client must present a verified certificate.
    Required,
    /// A certificate is verified if presented; clients without one are let in.
    Optional,
}

/// What `/readyz` asks of the default upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadyCheck {
    /// A TCP (or Unix) connect succeeds.
    Tcp,
    /// `GET PATH` answers 2xx.
    Http(String),
    /// Nothing.
    None,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object a line.
    Json,
}

/// One certificate source: an explicit pair or a Secret directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSource {
    /// The PEM chain.
    pub cert: PathBuf,
    /// The PEM key.
    pub key: PathBuf,
    /// Which option named it, for messages.
    pub option: &'static str,
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The TLS listener.
    pub listen: SocketAddr,
    /// The default upstream.
    pub upstream: UpstreamAddr,
    /// `--route`s in the order given.
    pub routes: Vec<Route>,
    /// Certificates in order; the first is the default. Empty: self-signed.
    pub certs: Vec<CertSource>,
    /// `--client-ca`.
    pub client_ca: Option<PathBuf>,
    /// `--client-auth`.
    pub client_auth: ClientAuth,
    /// `--allow-san`.
    pub allow_san: Vec<SanPattern>,
    /// `--tls-min-version` is 1.3.
    pub tls13_only: bool,
    /// `--proxy-protocol`: every TLS connection begins with a PROXY header.
    pub proxy_protocol: bool,
    /// `--proxy-protocol-from`; empty is any peer.
    pub proxy_protocol_from: Vec<Cidr>,
    /// `--admin-listen`; `None` is off.
    pub admin_listen: Option<SocketAddr>,
    /// `--redirect-listen`; `None` is off.
    pub redirect_listen: Option<SocketAddr>,
    /// `--ready-check`.
    pub ready_check: ReadyCheck,
    /// `--connect-timeout`; zero is off.
    pub connect_timeout: Duration,
    /// `--handshake-timeout`; zero is off.
    pub handshake_timeout: Duration,
    /// `--header-read-timeout`; zero is off.
    pub header_read_timeout: Duration,
    /// `--request-timeout`; zero is off.
    pub request_timeout: Duration,
    /// `--body-timeout`; zero is off.
    pub body_timeout: Duration,
    /// `--idle-timeout`; zero is off.
    pub idle_timeout: Duration,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--max-requests-in-flight`.
    pub max_requests_in_flight: usize,
    /// `--max-request-body`; zero is no limit.
    pub max_request_body: u64,
    /// `--max-header-bytes`.
    pub max_header_bytes: usize,
    /// `--drain-delay`.
    pub drain_delay: Duration,
    /// `--drain-timeout`.
    pub drain_timeout: Duration,
    /// `--workers`.
    pub workers: usize,
    /// `--cert-poll-interval`.
    pub cert_poll_interval: Duration,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `--log-level`.
    pub log_level: String,
    /// `--access-log`.
    pub access_log: bool,
    /// `--cert-watch`: react to file events besides the poll.
    pub watch_files: bool,
}

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run the ambassador.
    Run,
    /// `portico check`.
    Check,
}

/// Why the command line did not give a configuration.
#[derive(Debug)]
pub enum ArgsError {
    /// clap's own answer (help, version, unknown flag): print and exit with its code.
    Clap(clap::Error),
    /// A value that does not hold: exit 2.
    Config(ConfigError),
}

impl From<ConfigError> for ArgsError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

const OPTION_NAMES: &[&str] = &[
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
    "cert-watch",
    "log-format",
    "log-level",
    "access-log",
];

/// A value as text, with where it came from.
struct Given {
    values: Vec<String>,
    origin: String,
}

/// Values from flags/environment and the file, looked up by option name.
struct Sources {
    cli: BTreeMap<&'static str, Given>,
    file: BTreeMap<String, Given>,
}

impl Sources {
    fn get(&self, name: &str) -> Option<&Given> {
        self.cli.get(name).or_else(|| self.file.get(name))
    }

    fn one(&self, name: &'static str) -> Option<(&str, &Given)> {
        self.get(name)
            .and_then(|g| g.values.first().map(|v| (v.as_str(), g)))
    }

    fn parse<T>(
        &self,
        name: &'static str,
        default: T,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.one(name) {
            None => Ok(default),
            Some((v, g)) => f(v).map_err(|message| ConfigError {
                option: name.to_string(),
                origin: g.origin.clone(),
                message,
            }),
        }
    }

    fn list<T>(
        &self,
        name: &'static str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(g) => g
                .values
                .iter()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    f(v.trim()).map_err(|message| ConfigError {
                        option: name.to_string(),
                        origin: g.origin.clone(),
                        message,
                    })
                })
                .collect(),
        }
    }

    fn origin(&self, name: &str) -> String {
        self.get(name).map(|g| g.origin.clone()).unwrap_or_default()
    }
}

fn cli_sources(m: &ArgMatches, opts: &cli::Opts) -> BTreeMap<&'static str, Given> {
    let mut out = BTreeMap::new();
    let mut put = |name: &'static str, values: Vec<String>| {
        if values.is_empty() {
            return;
        }
        let id = name.replace('-', "_");
        let origin = match m.value_source(&id) {
            // An environment variable set to nothing (`PORTICO_LISTEN=`, or a
            // Pod `env` entry with `value: ""`) is unset: the file or the
            // default applies, for a scalar and for a list alike.
            Some(ValueSource::EnvVariable) if values.iter().all(|v| v.trim().is_empty()) => {
                return;
            }
            Some(ValueSource::EnvVariable) => format!("PORTICO_{}", id.to_ascii_uppercase()),
            _ => String::new(),
        };
        out.insert(name, Given { values, origin });
    };
    let o = |v: &Option<String>| v.iter().cloned().collect::<Vec<_>>();
    put("listen", o(&opts.listen));
    put("upstream", o(&opts.upstream));
    put("route", opts.route.clone());
    put("tls-cert", o(&opts.tls_cert));
    put("tls-key", o(&opts.tls_key));
    put("tls-dir", opts.tls_dir.clone());
    put("client-ca", o(&opts.client_ca));
    put("client-auth", o(&opts.client_auth));
    put("allow-san", opts.allow_san.clone());
    put("tls-min-version", o(&opts.tls_min_version));
    put("proxy-protocol", o(&opts.proxy_protocol));
    put("proxy-protocol-from", opts.proxy_protocol_from.clone());
    put("admin-listen", o(&opts.admin_listen));
    put("redirect-listen", o(&opts.redirect_listen));
    put("ready-check", o(&opts.ready_check));
    put("connect-timeout", o(&opts.connect_timeout));
    put("handshake-timeout", o(&opts.handshake_timeout));
    put("header-read-timeout", o(&opts.header_read_timeout));
    put("request-timeout", o(&opts.request_timeout));
    put("body-timeout", o(&opts.body_timeout));
    put("idle-timeout", o(&opts.idle_timeout));
    put("max-connections", o(&opts.max_connections));
    put("max-requests-in-flight", o(&opts.max_requests_in_flight));
    put("max-request-body", o(&opts.max_request_body));
    put("max-header-bytes", o(&opts.max_header_bytes));
    put("drain-delay", o(&opts.drain_delay));
    put("drain-timeout", o(&opts.drain_timeout));
    put("workers", o(&opts.workers));
    put("cert-poll-interval", o(&opts.cert_poll_interval));
    put("cert-watch", o(&opts.cert_watch));
    put("log-format", o(&opts.log_format));
    put("log-level", o(&opts.log_level));
    put("access-log", o(&opts.access_log));
    out
}

fn file_sources(path: &str) -> Result<BTreeMap<String, Given>, ConfigError> {
    let err = |message: String| ConfigError {
        option: "config".into(),
        origin: String::new(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {path}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(n) => err(format!("{path}:{n} is not valid TOML: {}", e.message())),
            None => err(format!("{path} is not valid TOML: {}", e.message())),
        }
    })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !OPTION_NAMES.contains(&key.as_str()) {
            return Err(err(format!("{path}: unknown key '{key}'")));
        }
        let bad = |what: &str| ConfigError {
            option: key.clone(),
            origin: path.to_string(),
            message: format!("must be {what}"),
        };
        let scalar = |v: &toml::Value| -> Option<String> {
            match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Boolean(true) => Some("on".into()),
                toml::Value::Boolean(false) => Some("off".into()),
                _ => None,
            }
        };
        let values = match (&value, key.as_str()) {
            (
                toml::Value::Array(items),
                "route" | "tls-dir" | "allow-san" | "proxy-protocol-from",
            ) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(bad("an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            (_, "route" | "tls-dir" | "allow-san" | "proxy-protocol-from") => {
                return Err(bad("an array of strings"))
            }
            (v, _) => vec![scalar(v).ok_or_else(|| bad("a string, integer or boolean"))?],
        };
        out.insert(
            key.clone(),
            Given {
                values,
                origin: path.to_string(),
            },
        );
    }
    Ok(out)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    if let Ok(a) = full.parse() {
        return Ok(a);
    }
    // A host name (`localhost:8443`): its first address.
    use std::net::ToSocketAddrs as _;
    full.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| format!("'{s}' is not an address (IP:PORT, e.g. 0.0.0.0:8443 or [::]:8443)"))
}

fn parse_optional_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        Ok(None)
    } else {
        parse_addr(s).map(Some)
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("'{s}' must be on or off")),
    }
}

/// The number of CPUs this process may use: std honours cgroup v1/v2 quotas.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Parses the command line (and environment and file) into a mode and a config.
    pub fn from_args<I, T>(args: I) -> Result<(Mode, Config), ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = cli::Cli::command()
            .try_get_matches_from(args)
            .map_err(ArgsError::Clap)?;
        let parsed = cli::Cli::from_arg_matches(&matches).map_err(ArgsError::Clap)?;
        let mode = match parsed.command {
            Some(cli::Command::Check) => Mode::Check,
            // main.rs runs `portico inject` before this parser; here it is
            // only when proxy options came first, which inject does not take.
            Some(cli::Command::Inject(_)) => {
                return Err(ArgsError::Clap(cli::Cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "inject takes no proxy option: write `portico inject [OPTIONS] [FILE...]`",
                )))
            }
            None => Mode::Run,
        };
        // clap propagates `global = true` options down into the subcommand's
        // matches, so there they hold what was given on either side of `check`.
        let (m, opts) = match matches.subcommand() {
            Some((_, sub)) => (
                sub,
                cli::Opts::from_arg_matches(sub).map_err(ArgsError::Clap)?,
            ),
            None => (&matches, parsed.opts),
        };
        let file = match &opts.config {
            Some(path) => file_sources(path)?,
            None => BTreeMap::new(),
        };
        let sources = Sources {
            cli: cli_sources(m, &opts),
            file,
        };
        Ok((mode, Self::from_sources(&sources)?))
    }

    fn from_sources(s: &Sources) -> Result<Self, ConfigError> {
        let d = Duration::from_secs;
        let err = |option: &str, message: String| ConfigError {
            option: option.to_string(),
            origin: s.origin(option),
            message,
        };

        let tls_cert = s.parse("tls-cert", None, |v| Ok(Some(PathBuf::from(v))))?;
        let tls_key = s.parse("tls-key", None, |v| Ok(Some(PathBuf::from(v))))?;
        let mut certs = Vec::new();
        match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => certs.push(CertSource {
                cert,
                key,
                option: "tls-cert",
            }),
            (Some(_), None) => {
                return Err(err("tls-key", "is required with --tls-cert".into()));
            }
            (None, Some(_)) => {
                return Err(err("tls-cert", "is required with --tls-key".into()));
            }
            (None, None) => {}
        }
        for dir in s.list("tls-dir", |v| Ok(PathBuf::from(v)))? {
            certs.push(CertSource {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
                option: "tls-dir",
            });
        }

        let client_ca = s.parse("client-ca", None, |v| Ok(Some(PathBuf::from(v))))?;
        let client_auth = s.parse("client-auth", ClientAuth::Required, |v| match v {
            "required" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            _ => Err(format!("'{v}' must be required or optional")),
        })?;
        if client_ca.is_none() && s.get("client-auth").is_some() {
            return Err(err("client-auth", "needs --client-ca".into()));
        }
        let allow_san = s.list("allow-san", SanPattern::parse)?;
        if client_ca.is_none() && !allow_san.is_empty() {
            return Err(err("allow-san", "needs --client-ca".into()));
        }

        let proxy_protocol = s.parse("proxy-protocol", false, parse_on_off)?;
        let proxy_protocol_from = s.list("proxy-protocol-from", Cidr::parse)?;
        if !proxy_protocol && !proxy_protocol_from.is_empty() {
            return Err(err(
                "proxy-protocol-from",
                "needs --proxy-protocol on".into(),
            ));
        }

        let max_header_bytes = s.parse("max-header-bytes", 64 << 10, |v| {
            let n = parse_size(v)?;
            if !(1024..=16 << 20).contains(&n) {
                return Err(format!("'{v}' must be between 1KiB and 16MiB"));
            }
            Ok(n as usize)
        })?;

        Ok(Self {
            listen: s.parse("listen", ([0, 0, 0, 0], 8443).into(), parse_addr)?,
            upstream: s.parse(
                "upstream",
                UpstreamAddr::Http("127.0.0.1:8080".into()),
                UpstreamAddr::parse,
            )?,
            routes: s.list("route", Route::parse)?,
            certs,
            client_ca,
            client_auth,
            allow_san,
            tls13_only: s.parse("tls-min-version", false, |v| match v {
                "1.2" => Ok(false),
                "1.3" => Ok(true),
                _ => Err(format!("'{v}' must be 1.2 or 1.3")),
            })?,
            proxy_protocol,
            proxy_protocol_from,
            admin_listen: s.parse(
                "admin-listen",
                Some(([0, 0, 0, 0], 9901).into()),
                parse_optional_addr,
            )?,
            redirect_listen: s.parse("redirect-listen", None, parse_optional_addr)?,
            ready_check: s.parse("ready-check", ReadyCheck::Tcp, |v| match v {
                "tcp" => Ok(ReadyCheck::Tcp),
                "none" => Ok(ReadyCheck::None),
                _ => match v.strip_prefix("http:") {
                    Some(p) if p.starts_with('/') && p.parse::<http::Uri>().is_ok() => {
                        Ok(ReadyCheck::Http(p.to_string()))
                    }
                    _ => Err(format!("'{v}' must be tcp, http:/PATH or none")),
                },
            })?,
            connect_timeout: s.parse("connect-timeout", d(5), parse_duration)?,
            handshake_timeout: s.parse("handshake-timeout", d(10), parse_duration)?,
            header_read_timeout: s.parse("header-read-timeout", d(10), parse_duration)?,
            request_timeout: s.parse("request-timeout", d(60), parse_duration)?,
            body_timeout: s.parse("body-timeout", d(60), parse_duration)?,
            idle_timeout: s.parse("idle-timeout", d(60), parse_duration)?,
            max_connections: s.parse("max-connections", 10_000, parse_count)?,
            max_requests_in_flight: s.parse("max-requests-in-flight", 1024, parse_count)?,
            max_request_body: s.parse("max-request-body", 0, parse_size)?,
            max_header_bytes,
            drain_delay: s.parse("drain-delay", Duration::ZERO, parse_duration)?,
            drain_timeout: s.parse("drain-timeout", d(30), parse_duration)?,
            workers: s.parse("workers", available_cpus(), parse_count)?,
            cert_poll_interval: s.parse("cert-poll-interval", d(10), |v| {
                let p = parse_duration(v)?;
                if p.is_zero() {
                    Err("must be more than 0".to_string())
                } else {
                    Ok(p)
                }
            })?,
            log_format: s.parse("log-format", LogFormat::Text, |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("'{v}' must be text or json")),
            })?,
            log_level: s.parse("log-level", "info".to_string(), |v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map(|_| v.to_string())
                    .map_err(|e| format!("'{v}' is not a level or directive list: {e}"))
            })?,
            access_log: s.parse("access-log", true, parse_on_off)?,
            watch_files: s.parse("cert-watch", true, parse_on_off)?,
        })
    }

    /// The default configuration, as if no option were given (for tests and benches).
    pub fn defaults() -> Self {
        let s = Sources {
            cli: BTreeMap::new(),
            file: BTreeMap::new(),
        };
        match Self::from_sources(&s) {
            Ok(c) => c,
            // The defaults are constants; failing to parse them is a bug in this file.
            Err(e) => unreachable!("default configuration is invalid: {e}"),
        }
    }
}
