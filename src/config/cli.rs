//! The command line, with `PORTICO_*` environment variables as clap's fallback.
//! Every value is kept as text here: `config.rs` parses flag, environment and
//! file values with the same code, so an error reads the same from any source.

use clap::{Args, Parser, Subcommand};

/// portico: a TLS-terminating ambassador for the primary container of a Pod.
#[derive(Parser, Debug)]
#[command(
    name = "portico",
    version,
    about,
    long_about = None,
    after_help = "Every option can also be set in the environment as PORTICO_<OPTION> \
                  (e.g. PORTICO_TLS_DIR); a repeatable option's variable takes its values \
                  separated by commas: PORTICO_TLS_DIR=/etc/tls/a,/etc/tls/b. Precedence: \
                  flag, environment, --config file, default. docs/reference.md has every option."
)]
pub struct Cli {
    /// What to do; without one, run the ambassador.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The options.
    #[command(flatten)]
    pub opts: Opts,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the configuration and every certificate, print a summary, exit 0 (or 2).
    Check,
    /// Add portico to the workloads in Kubernetes manifests (FILE... or stdin) and write them to stdout.
    Inject(crate::inject::InjectArgs),
}

/// Every option of SPEC's table, as given (flag or environment).
#[derive(Args, Debug, Default)]
pub struct Opts {
    /// TOML file with options (keys are the option names).
    #[arg(long, global = true, env = "PORTICO_CONFIG", value_name = "FILE")]
    pub config: Option<String>,
    /// The TLS listener [default: 0.0.0.0:8443].
    #[arg(long, global = true, env = "PORTICO_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The primary: http://HOST:PORT, h2c://HOST:PORT or unix:/PATH [default: http://127.0.0.1:8080].
    #[arg(long, global = true, env = "PORTICO_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Routes, each `[HOST]PATH=URL`; repeatable, the longest path prefix wins.
    #[arg(
        long,
        global = true,
        env = "PORTICO_ROUTE",
        value_name = "SPEC",
        value_delimiter = ',',
        // Not the doc comment: rustdoc would read `[HOST]` as a link.
        help = "[HOST]PATH=URL; repeatable. Longest path prefix wins"
    )]
    pub route: Vec<String>,
    /// PEM certificate chain, leaf first.
    #[arg(long, global = true, env = "PORTICO_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, global = true, env = "PORTICO_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<String>,
    /// A mounted kubernetes.io/tls Secret (tls.crt, tls.key); repeatable, SNI picks.
    #[arg(
        long,
        global = true,
        env = "PORTICO_TLS_DIR",
        value_name = "DIR",
        value_delimiter = ','
    )]
    pub tls_dir: Vec<String>,
    /// PEM bundle of CAs; turns on client certificate verification (mTLS).
    #[arg(long, global = true, env = "PORTICO_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<String>,
    /// required or optional [default: required].
    #[arg(long, global = true, env = "PORTICO_CLIENT_AUTH", value_name = "MODE")]
    pub client_auth: Option<String>,
    /// dns:NAME, uri:URI or cn:NAME a client certificate must carry; repeatable.
    #[arg(
        long,
        global = true,
        env = "PORTICO_ALLOW_SAN",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub allow_san: Vec<String>,
    /// 1.2 or 1.3 [default: 1.2].
    #[arg(long, global = true, env = "PORTICO_TLS_MIN_VERSION", value_name = "V")]
    pub tls_min_version: Option<String>,
    /// on or off: every TLS connection begins with a PROXY protocol header [default: off].
    #[arg(
        long,
        global = true,
        env = "PORTICO_PROXY_PROTOCOL",
        value_name = "on/off"
    )]
    pub proxy_protocol: Option<String>,
    /// A CIDR allowed to send the PROXY header (the load balancer's); repeatable [default: any].
    #[arg(
        long,
        global = true,
        env = "PORTICO_PROXY_PROTOCOL_FROM",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub proxy_protocol_from: Vec<String>,
    /// Plain-HTTP admin server, or off [default: 0.0.0.0:9901].
    #[arg(long, global = true, env = "PORTICO_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Plain-HTTP listener answering 308 to https, or off [default: off].
    #[arg(
        long,
        global = true,
        env = "PORTICO_REDIRECT_LISTEN",
        value_name = "ADDR"
    )]
    pub redirect_listen: Option<String>,
    /// tcp, http:/PATH or none [default: tcp].
    #[arg(long, global = true, env = "PORTICO_READY_CHECK", value_name = "CHECK")]
    pub ready_check: Option<String>,
    /// Connecting to an upstream [default: 5s].
    #[arg(long, global = true, env = "PORTICO_CONNECT_TIMEOUT", value_name = "D")]
    pub connect_timeout: Option<String>,
    /// A client's TLS handshake [default: 10s].
    #[arg(
        long,
        global = true,
        env = "PORTICO_HANDSHAKE_TIMEOUT",
        value_name = "D"
    )]
    pub handshake_timeout: Option<String>,
    /// Reading a request head [default: 10s].
    #[arg(
        long,
        global = true,
        env = "PORTICO_HEADER_READ_TIMEOUT",
        value_name = "D"
    )]
    pub header_read_timeout: Option<String>,
    /// Complete request to the upstream's response head [default: 60s].
    #[arg(long, global = true, env = "PORTICO_REQUEST_TIMEOUT", value_name = "D")]
    pub request_timeout: Option<String>,
    /// A body that moves no byte for this long is cut [default: 60s].
    #[arg(long, global = true, env = "PORTICO_BODY_TIMEOUT", value_name = "D")]
    pub body_timeout: Option<String>,
    /// An idle keep-alive client connection is closed after this [default: 60s].
    #[arg(long, global = true, env = "PORTICO_IDLE_TIMEOUT", value_name = "D")]
    pub idle_timeout: Option<String>,
    /// Client connections open at once [default: 10000].
    #[arg(long, global = true, env = "PORTICO_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Requests in flight; past it, 503 [default: 1024].
    #[arg(
        long,
        global = true,
        env = "PORTICO_MAX_REQUESTS_IN_FLIGHT",
        value_name = "N"
    )]
    pub max_requests_in_flight: Option<String>,
    /// Largest request body, 0 = no limit [default: 0].
    #[arg(
        long,
        global = true,
        env = "PORTICO_MAX_REQUEST_BODY",
        value_name = "SIZE"
    )]
    pub max_request_body: Option<String>,
    /// Largest request head [default: 64KiB].
    #[arg(
        long,
        global = true,
        env = "PORTICO_MAX_HEADER_BYTES",
        value_name = "SIZE"
    )]
    pub max_header_bytes: Option<String>,
    /// After SIGTERM, keep accepting this long while /readyz fails [default: 0s].
    #[arg(long, global = true, env = "PORTICO_DRAIN_DELAY", value_name = "D")]
    pub drain_delay: Option<String>,
    /// After the drain delay, how long requests in flight may take [default: 30s].
    #[arg(long, global = true, env = "PORTICO_DRAIN_TIMEOUT", value_name = "D")]
    pub drain_timeout: Option<String>,
    /// Worker threads [default: CPUs available to the container].
    #[arg(long, global = true, env = "PORTICO_WORKERS", value_name = "N")]
    pub workers: Option<String>,
    /// How often certificate files are re-read [default: 10s].
    #[arg(
        long,
        global = true,
        env = "PORTICO_CERT_POLL_INTERVAL",
        value_name = "D"
    )]
    pub cert_poll_interval: Option<String>,
    /// on or off: also react to file events, not only the poll [default: on].
    #[arg(long, global = true, env = "PORTICO_CERT_WATCH", value_name = "on/off")]
    pub cert_watch: Option<String>,
    /// text or json [default: text].
    #[arg(long, global = true, env = "PORTICO_LOG_FORMAT", value_name = "F")]
    pub log_format: Option<String>,
    /// A level or RUST_LOG-style directives [default: info].
    #[arg(long, global = true, env = "PORTICO_LOG_LEVEL", value_name = "L")]
    pub log_level: Option<String>,
    /// on or off: one line per request [default: on].
    #[arg(long, global = true, env = "PORTICO_ACCESS_LOG", value_name = "on/off")]
    pub access_log: Option<String>,
}
