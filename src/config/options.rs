//! The option table: every option portico takes, written once. The command
//! line (`cli.rs`), the `PORTICO_*` variables, the TOML keys, the defaults
//! `--help` shows and the lookups `Config` makes all follow from it, and a
//! lookup names an [`Opt`], so one the table lacks does not compile.

/// What an option is when no source gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// Nothing: the option is off, or its list is empty.
    None,
    /// This text, parsed as a given value is (so `--help` cannot disagree
    /// with what portico does).
    Text(&'static str),
    /// Worked out by `Config` when absent; the text only describes it in `--help`.
    Described(&'static str),
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// Which option.
    pub opt: Opt,
    /// The flag without its dashes, and the TOML key.
    pub name: &'static str,
    /// The value's placeholder in `--help`.
    pub value_name: &'static str,
    /// The one-line help, without the default.
    pub help: &'static str,
    /// What applies when it is not given.
    pub default: DefaultValue,
    /// Takes several values: flags one at a time, the variable comma-separated,
    /// a TOML array.
    pub repeatable: bool,
    /// May be a key of the `--config` file (all but `--config` itself).
    pub in_file: bool,
}

impl OptionSpec {
    /// What the rows leave out: a scalar with no default, allowed in the file.
    const SCALAR: Self = Self {
        opt: Opt::Config,
        name: "",
        value_name: "",
        help: "",
        default: DefaultValue::None,
        repeatable: false,
        in_file: true,
    };

    /// The environment variable: `PORTICO_` and the name in upper case, `-` as `_`.
    pub fn env(&self) -> String {
        format!(
            "PORTICO_{}",
            self.name.replace('-', "_").to_ascii_uppercase()
        )
    }

    /// The help line `--help` shows, with the default.
    pub fn help_line(&self) -> String {
        match self.default {
            DefaultValue::None => self.help.to_string(),
            DefaultValue::Text(d) | DefaultValue::Described(d) => {
                format!("{} [default: {d}]", self.help)
            }
        }
    }

    /// The row of the option spelled `name` (a TOML key), if there is one.
    pub fn find(name: &str) -> Option<&'static Self> {
        OPTIONS.iter().find(|s| s.name == name)
    }
}

/// Declares `Opt` and `OPTIONS` from one list, in the same order, so that
/// `Opt::spec` can index the table.
macro_rules! options {
    ($($opt:ident $name:literal { $($field:ident: $value:expr),* $(,)? })*) => {
        /// An option of the table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Opt {
            $(
                #[doc = concat!("`--", $name, "`")]
                $opt,
            )*
        }

        /// Every option, in `--help` order.
        pub const OPTIONS: &[OptionSpec] = &[
            $(OptionSpec { opt: Opt::$opt, name: $name, $($field: $value,)* ..OptionSpec::SCALAR },)*
        ];
    };
}

use DefaultValue::{Described, Text};

options! {
    Config "config" {
        value_name: "FILE", help: "TOML file with options (keys are the option names)",
        in_file: false,
    }
    Listen "listen" {
        value_name: "ADDR", help: "The TLS listener", default: Text("0.0.0.0:8443"),
    }
    Upstream "upstream" {
        value_name: "URL",
        help: "The primary: http://HOST:PORT, h2c://HOST:PORT or unix:/PATH",
        default: Text("http://127.0.0.1:8080"),
    }
    Route "route" {
        value_name: "SPEC", help: "[HOST]PATH=URL; repeatable. Longest path prefix wins",
        repeatable: true,
    }
    TlsCert "tls-cert" { value_name: "FILE", help: "PEM certificate chain, leaf first" }
    TlsKey "tls-key" { value_name: "FILE", help: "PEM private key (PKCS#8, PKCS#1 or SEC1)" }
    TlsDir "tls-dir" {
        value_name: "DIR",
        help: "A mounted kubernetes.io/tls Secret (tls.crt, tls.key); repeatable, SNI picks",
        repeatable: true,
    }
    ClientCa "client-ca" {
        value_name: "FILE",
        help: "PEM bundle of CAs; turns on client certificate verification (mTLS)",
    }
    ClientAuth "client-auth" {
        value_name: "MODE", help: "required or optional", default: Text("required"),
    }
    AllowSan "allow-san" {
        value_name: "PATTERN",
        help: "dns:NAME, uri:URI or cn:NAME a client certificate must carry; repeatable",
        repeatable: true,
    }
    TlsMinVersion "tls-min-version" {
        value_name: "V", help: "1.2 or 1.3", default: Text("1.2"),
    }
    ProxyProtocol "proxy-protocol" {
        value_name: "on/off",
        help: "on or off: every TLS connection begins with a PROXY protocol header",
        default: Text("off"),
    }
    ProxyProtocolFrom "proxy-protocol-from" {
        value_name: "CIDR",
        help: "A CIDR allowed to send the PROXY header (the load balancer's); repeatable",
        default: Described("any"), repeatable: true,
    }
    AdminListen "admin-listen" {
        value_name: "ADDR", help: "Plain-HTTP admin server, or off",
        default: Text("0.0.0.0:9901"),
    }
    RedirectListen "redirect-listen" {
        value_name: "ADDR", help: "Plain-HTTP listener answering 308 to https, or off",
        default: Text("off"),
    }
    ReadyCheck "ready-check" {
        value_name: "CHECK", help: "tcp, http:/PATH or none", default: Text("tcp"),
    }
    ConnectTimeout "connect-timeout" {
        value_name: "D", help: "Connecting to an upstream", default: Text("5s"),
    }
    HandshakeTimeout "handshake-timeout" {
        value_name: "D", help: "A client's TLS handshake", default: Text("10s"),
    }
    HeaderReadTimeout "header-read-timeout" {
        value_name: "D", help: "Reading a request head", default: Text("10s"),
    }
    RequestTimeout "request-timeout" {
        value_name: "D", help: "Complete request to the upstream's response head",
        default: Text("60s"),
    }
    BodyTimeout "body-timeout" {
        value_name: "D", help: "A body that moves no byte for this long is cut",
        default: Text("60s"),
    }
    IdleTimeout "idle-timeout" {
        value_name: "D", help: "An idle keep-alive client connection is closed after this",
        default: Text("60s"),
    }
    MaxConnections "max-connections" {
        value_name: "N", help: "Client connections open at once", default: Text("10000"),
    }
    MaxRequestsInFlight "max-requests-in-flight" {
        value_name: "N", help: "Requests in flight; past it, 503", default: Text("1024"),
    }
    MaxRequestBody "max-request-body" {
        value_name: "SIZE", help: "Largest request body, 0 = no limit", default: Text("0"),
    }
    MaxHeaderBytes "max-header-bytes" {
        value_name: "SIZE", help: "Largest request head", default: Text("64KiB"),
    }
    DrainDelay "drain-delay" {
        value_name: "D", help: "After SIGTERM, keep accepting this long while /readyz fails",
        default: Text("0s"),
    }
    DrainTimeout "drain-timeout" {
        value_name: "D", help: "After the drain delay, how long requests in flight may take",
        default: Text("30s"),
    }
    Workers "workers" {
        value_name: "N", help: "Worker threads",
        default: Described("CPUs available to the container"),
    }
    CertPollInterval "cert-poll-interval" {
        value_name: "D", help: "How often certificate files are re-read", default: Text("10s"),
    }
    CertWatch "cert-watch" {
        value_name: "on/off", help: "on or off: also react to file events, not only the poll",
        default: Text("on"),
    }
    LogFormat "log-format" {
        value_name: "F", help: "text or json", default: Text("text"),
    }
    LogLevel "log-level" {
        value_name: "L", help: "A level or RUST_LOG-style directives", default: Text("info"),
    }
    AccessLog "access-log" {
        value_name: "on/off", help: "on or off: one line per request", default: Text("on"),
    }
}

impl Opt {
    /// Its row of the table.
    pub fn spec(self) -> &'static OptionSpec {
        // The macro writes `Opt` and `OPTIONS` in the same order.
        &OPTIONS[self as usize]
    }

    /// The flag without its dashes (`tls-key`).
    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_found_by_its_option_and_its_name() {
        for (i, spec) in OPTIONS.iter().enumerate() {
            assert_eq!(spec.opt as usize, i, "{}", spec.name);
            assert_eq!(spec.opt.spec(), spec);
            assert_eq!(OptionSpec::find(spec.name), Some(spec));
        }
        assert_eq!(OptionSpec::find("listen-port"), None);
        assert_eq!(OptionSpec::find(""), None);
    }

    #[test]
    fn the_variant_spells_the_name() {
        for spec in OPTIONS {
            let mut kebab = String::new();
            for (i, c) in format!("{:?}", spec.opt).chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    kebab.push('-');
                }
                kebab.push(c.to_ascii_lowercase());
            }
            assert_eq!(kebab, spec.name);
            assert!(!spec.value_name.is_empty() && !spec.help.is_empty());
        }
    }

    #[test]
    fn environment_names_and_help_lines() {
        assert_eq!(
            Opt::MaxRequestsInFlight.spec().env(),
            "PORTICO_MAX_REQUESTS_IN_FLIGHT"
        );
        assert_eq!(Opt::Config.spec().env(), "PORTICO_CONFIG");
        assert_eq!(
            Opt::Listen.spec().help_line(),
            "The TLS listener [default: 0.0.0.0:8443]"
        );
        assert_eq!(
            Opt::TlsCert.spec().help_line(),
            "PEM certificate chain, leaf first"
        );
        assert_eq!(
            Opt::Workers.spec().help_line(),
            "Worker threads [default: CPUs available to the container]"
        );
        let in_file: Vec<&str> = OPTIONS
            .iter()
            .filter(|s| !s.in_file)
            .map(|s| s.name)
            .collect();
        assert_eq!(in_file, ["config"]);
        let lists: Vec<&str> = OPTIONS
            .iter()
            .filter(|s| s.repeatable)
            .map(|s| s.name)
            .collect();
        assert_eq!(
            lists,
            ["route", "tls-dir", "allow-san", "proxy-protocol-from"]
        );
    }
}
