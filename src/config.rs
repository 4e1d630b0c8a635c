//! The validated configuration: flag, then `PORTICO_*` environment, then the TOML
//! file, then the default. Everything is parsed here, once, before any socket is
//! opened; an error names the option and where its value came from.

pub mod cidr;
pub mod cli;
pub mod options;
pub mod route;
pub mod san;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cidr::Cidr;
pub use options::{DefaultValue, Opt, OptionSpec, OPTIONS};
use route::{Route, UpstreamAddr};
use san::SanPattern;
use units::{parse_duration, parse_size};

/// A configuration error: which option, from where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The option's name without dashes (`config` for the file itself).
    pub option: &'static str,
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

impl CertSource {
    /// The option that named the key file: `--tls-key` beside `--tls-cert`,
    /// else the source's own (`--tls-dir`).
    pub fn key_option(&self) -> &'static str {
        if self.option == Opt::TlsCert.name() {
            Opt::TlsKey.name()
        } else {
            self.option
        }
    }
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

/// A value as text, with where it came from.
struct Given {
    values: Vec<String>,
    origin: String,
}

/// Values from flags/environment and the file, looked up by option.
struct Sources {
    cli: BTreeMap<Opt, Given>,
    file: BTreeMap<Opt, Given>,
}

impl Sources {
    fn get(&self, opt: Opt) -> Option<&Given> {
        self.cli.get(&opt).or_else(|| self.file.get(&opt))
    }

    fn error(&self, opt: Opt, message: String) -> ConfigError {
        ConfigError {
            option: opt.name(),
            origin: self.get(opt).map(|g| g.origin.clone()).unwrap_or_default(),
            message,
        }
    }

    /// A single value: the given one, else the table's default text, both
    /// parsed by `f`; `None` when neither is there.
    fn optional<T>(
        &self,
        opt: Opt,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let spec = opt.spec();
        debug_assert!(!spec.repeatable, "--{} is repeatable", spec.name);
        let (text, origin) = match self.get(opt).and_then(|g| g.values.first().map(|v| (v, g))) {
            Some((v, g)) => (v.as_str(), g.origin.as_str()),
            None => match spec.default {
                DefaultValue::Text(t) => (t, "the option table's default"),
                DefaultValue::None | DefaultValue::Described(_) => return Ok(None),
            },
        };
        f(text).map(Some).map_err(|message| ConfigError {
            option: spec.name,
            origin: origin.to_string(),
            message,
        })
    }

    /// A single value of an option whose default the table gives as text.
    fn value<T>(&self, opt: Opt, f: impl Fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        // `Config::defaults` meets a row without one at once, in every test.
        self.optional(opt, f)?.ok_or_else(|| ConfigError {
            option: opt.name(),
            origin: String::new(),
            message: "has no default in the option table".into(),
        })
    }

    /// A repeatable option's values, blanks dropped; empty when not given.
    fn list<T>(
        &self,
        opt: Opt,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        debug_assert!(opt.spec().repeatable, "--{} is not repeatable", opt.name());
        match self.get(opt) {
            None => Ok(Vec::new()),
            Some(g) => g
                .values
                .iter()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    f(v.trim()).map_err(|message| ConfigError {
                        option: opt.name(),
                        origin: g.origin.clone(),
                        message,
                    })
                })
                .collect(),
        }
    }
}

fn file_sources(path: &str) -> Result<BTreeMap<Opt, Given>, ConfigError> {
    let err = |message: String| ConfigError {
        option: Opt::Config.name(),
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
        let Some(spec) = OptionSpec::find(&key).filter(|s| s.in_file) else {
            return Err(err(format!("{path}: unknown key '{key}'")));
        };
        let bad = |what: &str| ConfigError {
            option: spec.name,
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
        let values = match (&value, spec.repeatable) {
            (toml::Value::Array(items), true) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(bad("an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            (_, true) => return Err(bad("an array of strings")),
            (v, false) => vec![scalar(v).ok_or_else(|| bad("a string, integer or boolean"))?],
        };
        out.insert(
            spec.opt,
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
    /// Parses the command line (and the process's environment and the file)
    /// into a mode and a config.
    pub fn from_args<I, T>(args: I) -> Result<(Mode, Config), ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::from_args_env(args, |name| std::env::var(name).ok())
    }

    /// As [`Config::from_args`], with `env` giving the value of a variable in
    /// place of the process's environment.
    pub fn from_args_env<I, T>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Mode, Config), ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = cli::command()
            .try_get_matches_from(args)
            .map_err(ArgsError::Clap)?;
        // clap propagates `global` options down into the subcommand's
        // matches, so there they hold what was given on either side of `check`.
        let (mode, m) = match matches.subcommand() {
            Some((cli::CHECK, sub)) => (Mode::Check, sub),
            Some(_) => {
                return Err(ArgsError::Clap(cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "inject takes no proxy option: write `portico inject [OPTIONS] [FILE...]`",
                )))
            }
            None => (Mode::Run, &matches),
        };
        let cli = cli::given(m, &env);
        let file = match cli.get(&Opt::Config).and_then(|g| g.values.first()) {
            Some(path) => file_sources(path)?,
            None => BTreeMap::new(),
        };
        Ok((mode, Self::from_sources(&Sources { cli, file })?))
    }

    fn from_sources(s: &Sources) -> Result<Self, ConfigError> {
        let path = |v: &str| Ok(PathBuf::from(v));
        let tls_cert = s.optional(Opt::TlsCert, path)?;
        let tls_key = s.optional(Opt::TlsKey, path)?;
        let mut certs = Vec::new();
        match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => certs.push(CertSource {
                cert,
                key,
                option: Opt::TlsCert.name(),
            }),
            (Some(_), None) => {
                let message = format!("is required with --{}", Opt::TlsCert.name());
                return Err(s.error(Opt::TlsKey, message));
            }
            (None, Some(_)) => {
                let message = format!("is required with --{}", Opt::TlsKey.name());
                return Err(s.error(Opt::TlsCert, message));
            }
            (None, None) => {}
        }
        for dir in s.list(Opt::TlsDir, path)? {
            certs.push(CertSource {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
                option: Opt::TlsDir.name(),
            });
        }

        let client_ca = s.optional(Opt::ClientCa, path)?;
        let needs_ca = format!("needs --{}", Opt::ClientCa.name());
        let client_auth = s.value(Opt::ClientAuth, |v| match v {
            "required" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            _ => Err(format!("'{v}' must be required or optional")),
        })?;
        if client_ca.is_none() && s.get(Opt::ClientAuth).is_some() {
            return Err(s.error(Opt::ClientAuth, needs_ca));
        }
        let allow_san = s.list(Opt::AllowSan, SanPattern::parse)?;
        if client_ca.is_none() && !allow_san.is_empty() {
            return Err(s.error(Opt::AllowSan, needs_ca));
        }

        let proxy_protocol = s.value(Opt::ProxyProtocol, parse_on_off)?;
        let proxy_protocol_from = s.list(Opt::ProxyProtocolFrom, Cidr::parse)?;
        if !proxy_protocol && !proxy_protocol_from.is_empty() {
            let message = format!("needs --{} on", Opt::ProxyProtocol.name());
            return Err(s.error(Opt::ProxyProtocolFrom, message));
        }

        let max_header_bytes = s.value(Opt::MaxHeaderBytes, |v| {
            let n = parse_size(v)?;
            if !(1024..=16 << 20).contains(&n) {
                return Err(format!("'{v}' must be between 1KiB and 16MiB"));
            }
            Ok(n as usize)
        })?;

        Ok(Self {
            listen: s.value(Opt::Listen, parse_addr)?,
            upstream: s.value(Opt::Upstream, UpstreamAddr::parse)?,
            routes: s.list(Opt::Route, Route::parse)?,
            certs,
            client_ca,
            client_auth,
            allow_san,
            tls13_only: s.value(Opt::TlsMinVersion, |v| match v {
                "1.2" => Ok(false),
                "1.3" => Ok(true),
                _ => Err(format!("'{v}' must be 1.2 or 1.3")),
            })?,
            proxy_protocol,
            proxy_protocol_from,
            admin_listen: s.value(Opt::AdminListen, parse_optional_addr)?,
            redirect_listen: s.value(Opt::RedirectListen, parse_optional_addr)?,
            ready_check: s.value(Opt::ReadyCheck, |v| match v {
                "tcp" => Ok(ReadyCheck::Tcp),
                "none" => Ok(ReadyCheck::None),
                _ => match v.strip_prefix("http:") {
                    Some(p) if p.starts_with('/') && p.parse::<http::Uri>().is_ok() => {
                        Ok(ReadyCheck::Http(p.to_string()))
                    }
                    _ => Err(format!("'{v}' must be tcp, http:/PATH or none")),
                },
            })?,
            connect_timeout: s.value(Opt::ConnectTimeout, parse_duration)?,
            handshake_timeout: s.value(Opt::HandshakeTimeout, parse_duration)?,
            header_read_timeout: s.value(Opt::HeaderReadTimeout, parse_duration)?,
            request_timeout: s.value(Opt::RequestTimeout, parse_duration)?,
            body_timeout: s.value(Opt::BodyTimeout, parse_duration)?,
            idle_timeout: s.value(Opt::IdleTimeout, parse_duration)?,
            max_connections: s.value(Opt::MaxConnections, parse_count)?,
            max_requests_in_flight: s.value(Opt::MaxRequestsInFlight, parse_count)?,
            max_request_body: s.value(Opt::MaxRequestBody, parse_size)?,
            max_header_bytes,
            drain_delay: s.value(Opt::DrainDelay, parse_duration)?,
            drain_timeout: s.value(Opt::DrainTimeout, parse_duration)?,
            workers: s
                .optional(Opt::Workers, parse_count)?
                .unwrap_or_else(available_cpus),
            cert_poll_interval: s.value(Opt::CertPollInterval, |v| {
                let p = parse_duration(v)?;
                if p.is_zero() {
                    Err("must be more than 0".to_string())
                } else {
                    Ok(p)
                }
            })?,
            log_format: s.value(Opt::LogFormat, |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("'{v}' must be text or json")),
            })?,
            log_level: s.value(Opt::LogLevel, |v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map(|_| v.to_string())
                    .map_err(|e| format!("'{v}' is not a level or directive list: {e}"))
            })?,
            access_log: s.value(Opt::AccessLog, parse_on_off)?,
            watch_files: s.value(Opt::CertWatch, parse_on_off)?,
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
            // The defaults are the table's; failing to parse them is a bug there.
            Err(e) => unreachable!("default configuration is invalid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's default texts give the values portico has always had.
    #[test]
    fn defaults_from_the_table() {
        let c = Config::defaults();
        let s = Duration::from_secs;
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8443)));
        assert_eq!(c.upstream, UpstreamAddr::Http("127.0.0.1:8080".into()));
        assert!(c.routes.is_empty() && c.certs.is_empty() && c.allow_san.is_empty());
        assert_eq!((c.client_ca, c.client_auth), (None, ClientAuth::Required));
        assert!(!c.tls13_only && !c.proxy_protocol && c.proxy_protocol_from.is_empty());
        assert_eq!(c.admin_listen, Some(SocketAddr::from(([0, 0, 0, 0], 9901))));
        assert_eq!(c.redirect_listen, None);
        assert_eq!(c.ready_check, ReadyCheck::Tcp);
        assert_eq!(
            [
                c.connect_timeout,
                c.handshake_timeout,
                c.header_read_timeout,
                c.request_timeout,
                c.body_timeout,
                c.idle_timeout,
                c.drain_delay,
                c.drain_timeout,
                c.cert_poll_interval,
            ],
            [s(5), s(10), s(10), s(60), s(60), s(60), s(0), s(30), s(10)]
        );
        assert_eq!(
            (c.max_connections, c.max_requests_in_flight),
            (10_000, 1024)
        );
        assert_eq!((c.max_request_body, c.max_header_bytes), (0, 64 << 10));
        assert_eq!(c.workers, available_cpus());
        assert_eq!(
            (c.log_format, c.log_level.as_str()),
            (LogFormat::Text, "info")
        );
        assert!(c.access_log && c.watch_files);
    }

    #[test]
    fn a_bad_value_names_its_option_and_source() {
        let run = |args: &[&str], env: &[(&str, &str)]| {
            let mut all = vec!["portico"];
            all.extend_from_slice(args);
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            match Config::from_args_env(all, |k| env.get(k).cloned()) {
                Err(ArgsError::Config(e)) => e.to_string(),
                Err(ArgsError::Clap(e)) => panic!("{args:?}: clap: {e}"),
                Ok(_) => panic!("{args:?} {env:?} taken"),
            }
        };
        assert_eq!(
            run(&["--workers", "0"], &[]),
            "--workers: '0' is not a whole number of at least 1"
        );
        assert_eq!(
            run(&[], &[("PORTICO_TLS_MIN_VERSION", "1.1")]),
            "--tls-min-version (from PORTICO_TLS_MIN_VERSION): '1.1' must be 1.2 or 1.3"
        );
        assert_eq!(
            run(&["--tls-cert", "/a.crt"], &[]),
            "--tls-key: is required with --tls-cert"
        );
        assert_eq!(
            run(&[], &[("PORTICO_ALLOW_SAN", "dns:a")]),
            "--allow-san (from PORTICO_ALLOW_SAN): needs --client-ca"
        );
        assert_eq!(
            run(&["--proxy-protocol-from", "10.0.0.0/8"], &[]),
            "--proxy-protocol-from: needs --proxy-protocol on"
        );
    }
}
