//! Wiring: load certificates, bind every socket, start the servers, and run
//! until drained. `build` returns the bound addresses so tests use real ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::certs::{self, CertStore, LoadError};
use crate::config::{Config, Opt};
use crate::listener;
use crate::readiness::{self, Readiness};
use crate::reload::{self, Reloader};
use crate::shutdown::{reached, Drain, Phase};
use crate::stack::Shared;
use crate::telemetry::{Metrics, NameLabel};
use crate::tls::{self, AcceptorError, ClientPolicy, TlsAcceptor};

/// Why portico cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An option's value, or a file it names, does not hold: exit 2.
    #[error("--{option}: {message}")]
    Option {
        /// The option, without dashes.
        option: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A listener's address cannot be bound (in use, not this host's): exit 1.
    #[error("--{option}: cannot listen on {addr}: {error}")]
    Listen {
        /// The option that gave the address.
        option: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// Anything else: exit 1.
    #[error("{0}")]
    Fatal(String),
}

impl StartError {
    /// The process exit code the reference gives this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Option { .. } => 2,
            Self::Listen { .. } | Self::Fatal(_) => 1,
        }
    }
}

impl From<LoadError> for StartError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Source { option, error } => Self::Option {
                option,
                message: error.to_string(),
            },
            LoadError::SelfSigned(e) => Self::Fatal(e.to_string()),
        }
    }
}

/// Certificates and TLS settings, loaded and checked (what `check` reports).
pub struct Loaded {
    /// The store in service.
    pub store: Arc<CertStore>,
    /// The acceptor over it.
    pub tls: Arc<TlsAcceptor>,
    /// Problems that still let portico serve (an expired leaf that is all there is).
    pub warnings: Vec<String>,
}

/// The tokio runtime portico runs on: one worker is a current-thread runtime,
/// with no work-stealing machinery to pay for; workers give freed memory back
/// to the OS as they go idle (`alloc::collect_when_idle`).
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    #[cfg(feature = "mimalloc")]
    builder.on_thread_park(crate::alloc::collect_when_idle);
    builder.enable_all().build()
}

/// Loads every certificate and the client CA; errors name the option and the file.
pub fn load(cfg: &Config) -> Result<Loaded, StartError> {
    let provider = tls::provider();
    let (store, warnings) = CertStore::load(&cfg.certs, &provider)?;
    let store = Arc::new(store);
    let policy = ClientPolicy::from_config(cfg);
    let tls = TlsAcceptor::new(store.clone(), policy.as_ref(), cfg.tls13_only, provider).map_err(
        |e| match e {
            AcceptorError::ClientCa(message) => StartError::Option {
                option: Opt::ClientCa.name(),
                message,
            },
            AcceptorError::Setup(m) => StartError::Fatal(format!("cannot set up TLS: {m}")),
        },
    )?;
    Ok(Loaded {
        store,
        tls: Arc::new(tls),
        warnings,
    })
}

/// A started portico: its bound addresses, and what `run` drives.
pub struct App {
    /// The TLS listener's address.
    pub tls_addr: SocketAddr,
    /// The admin server's address, if on.
    pub admin_addr: Option<SocketAddr>,
    /// The redirect listener's address, if on.
    pub redirect_addr: Option<SocketAddr>,
    /// Drain state: `advance(Phase::Draining)` starts a graceful shutdown.
    pub drain: Arc<Drain>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The TLS acceptor (and its certificate store).
    pub tls: Arc<TlsAcceptor>,
    /// The certificate reloader (`SIGHUP` calls `reload_all`).
    pub reloader: Arc<Reloader>,
    shared: Arc<Shared>,
}

async fn bind(addr: SocketAddr, opt: Opt) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Listen {
            option: opt.name(),
            addr,
            error,
        })
}

/// Loads certificates, binds every socket and starts serving.
pub async fn build(cfg: Config) -> Result<App, StartError> {
    let loaded = load(&cfg)?;
    if cfg.certs.is_empty() {
        tracing::warn!(
            "no certificate configured (--tls-cert/--tls-key or --tls-dir): serving an ephemeral self-signed certificate for localhost"
        );
    }
    for w in &loaded.warnings {
        tracing::error!("{w}; serving it because it is the only certificate for this source");
    }
    let metrics = Arc::new(Metrics::new());
    for slot in loaded.store.slots() {
        let c = slot.current.load();
        metrics
            .cert_not_after
            .get_or_create(&NameLabel { name: c.label() })
            .set(c.not_after);
    }

    let tls_listener = bind(cfg.listen, Opt::Listen).await?;
    let admin_listener = match cfg.admin_listen {
        Some(a) => Some(bind(a, Opt::AdminListen).await?),
        None => None,
    };
    let redirect_listener = match cfg.redirect_listen {
        Some(a) => Some(bind(a, Opt::RedirectListen).await?),
        None => None,
    };
    let tls_addr = tls_listener
        .local_addr()
        .map_err(|e| StartError::Fatal(format!("--{}: {e}", Opt::Listen.name())))?;

    let drain = Arc::new(Drain::default());
    let shared = Arc::new(Shared::new(cfg.clone(), metrics.clone(), drain.clone()));

    let ready = Arc::new(Readiness::new(
        drain.clone(),
        cfg.ready_check == crate::config::ReadyCheck::None,
    ));
    let default_upstream = shared.upstreams[shared.upstreams.len() - 1].clone();
    tokio::spawn(readiness::run_checks(
        ready.clone(),
        cfg.ready_check.clone(),
        default_upstream.connector.clone(),
        default_upstream.addr.to_string(),
    ));

    let admin_addr = match admin_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            tokio::spawn(admin::run_admin(
                l,
                AdminState {
                    metrics: metrics.clone(),
                    ready,
                    drain: drain.clone(),
                },
            ));
            addr
        }
        None => None,
    };
    let redirect_addr = match redirect_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            tokio::spawn(admin::run_redirect(
                l,
                tls_addr.port(),
                cfg.max_connections,
                drain.clone(),
            ));
            addr
        }
        None => None,
    };
    tokio::spawn(listener::run(
        tls_listener,
        loaded.tls.clone(),
        shared.clone(),
    ));

    let watched: Vec<_> = cfg
        .certs
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .chain(cfg.client_ca.clone())
        .collect();
    for p in reload::unrotatable(&watched) {
        tracing::warn!(path = %p.display(),
            "this certificate file is bind-mounted on its own (a Secret mounted with subPath?) and will never rotate: mount the whole Secret as a directory and use --tls-dir");
    }
    let reloader = Arc::new(Reloader::new(
        loaded.store.clone(),
        loaded.tls.clone(),
        ClientPolicy::from_config(&cfg),
        metrics.clone(),
        tls::provider(),
    ));
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(reloader.clone().run(
        cfg.cert_poll_interval,
        cfg.watch_files,
        events_rx,
        events_tx,
    ));

    Ok(App {
        tls_addr,
        admin_addr,
        redirect_addr,
        drain,
        metrics,
        tls: loaded.tls,
        reloader,
        shared,
    })
}

impl App {
    /// Serves until a drain is requested, then drains as docs/reference.md describes and returns.
    pub async fn run(self) {
        let cfg = &self.shared.cfg;
        let mut phase = self.drain.subscribe();
        reached(&mut phase, Phase::Draining).await;
        tracing::info!(
            delay = ?cfg.drain_delay, timeout = ?cfg.drain_timeout,
            "draining: /readyz fails now; the listener closes after the delay"
        );
        tokio::time::sleep(cfg.drain_delay).await;
        self.drain.advance(Phase::Closing);
        let open = self.drain.active();
        tracing::info!(
            connections = open,
            "listener closed; waiting for requests in flight"
        );
        // `--drain-timeout 0` turns the limit off, as `0` does for every timeout.
        let deadline = async {
            if cfg.drain_timeout.is_zero() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(cfg.drain_timeout).await
            }
        };
        let timed_out = tokio::select! {
            biased;
            _ = self.drain.wait_idle() => false,
            _ = deadline => true,
        };
        if timed_out {
            let cut = self
                .drain
                .requests
                .load(std::sync::atomic::Ordering::Acquire);
            tracing::warn!(
                requests_cut = cut,
                connections = self.drain.active(),
                "drain timeout passed: exiting with {cut} request(s) still in flight"
            );
        } else {
            tracing::info!("drained: no request in flight");
        }
        // Let the last responses' close_notify and FIN reach the wire.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The text `portico check` prints.
pub fn summary(cfg: &Config, loaded: &Loaded) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "listeners:");
    let _ = writeln!(
        s,
        "  tls       {}  (TLS {}+, ALPN h2, http/1.1)",
        cfg.listen,
        if cfg.tls13_only { "1.3" } else { "1.2" }
    );
    if cfg.proxy_protocol {
        let from = if cfg.proxy_protocol_from.is_empty() {
            "any peer".to_string()
        } else {
            let nets: Vec<String> = cfg
                .proxy_protocol_from
                .iter()
                .map(|c| c.to_string())
                .collect();
            nets.join(", ")
        };
        let _ = writeln!(s, "            PROXY protocol header required, from {from}");
    }
    match cfg.admin_listen {
        Some(a) => {
            let _ = writeln!(s, "  admin     {a}");
        }
        None => {
            let _ = writeln!(s, "  admin     off");
        }
    }
    if let Some(a) = cfg.redirect_listen {
        let _ = writeln!(s, "  redirect  {a}");
    }
    let _ = writeln!(s, "routes:");
    let table = crate::routing::RouteTable::new(cfg.upstream.clone(), cfg.routes.clone());
    for r in table.all() {
        let _ = writeln!(s, "  {:<40} -> {}", r.name, r.upstream);
    }
    let _ = writeln!(s, "certificates:");
    let now = certs::load::unix_now();
    for slot in loaded.store.slots() {
        let c = slot.current.load();
        let from = slot
            .source
            .as_ref()
            .map_or("self-signed (ephemeral)".to_string(), |src| {
                src.cert.display().to_string()
            });
        let _ = writeln!(s, "  {from}");
        let _ = writeln!(
            s,
            "    names      {}",
            if c.dns_names.is_empty() {
                c.common_name.clone().unwrap_or_default()
            } else {
                c.dns_names.join(", ")
            }
        );
        let _ = writeln!(s, "    issuer     {}", c.issuer);
        let _ = writeln!(
            s,
            "    not after  {} ({} days)",
            certs::load::fmt_unix(c.not_after),
            (c.not_after - now) / 86400
        );
        let _ = writeln!(s, "    key        {}", c.key_type);
    }
    if let Some(ca) = &cfg.client_ca {
        let _ = writeln!(
            s,
            "client certificates: {:?} against {}",
            cfg.client_auth,
            ca.display()
        );
    }
    s
}
