//! The `portico` binary: parse the configuration (exit 2 naming the option),
//! start (exit 2 for bad certificates, 1 for anything else), run until drained.

use std::process::ExitCode;

/// mimalloc: per-thread free lists suit a proxy's many short-lived buffers;
/// measured in benches/README.md. `--no-default-features` builds with the
/// system allocator instead, for heap profilers that hook malloc (heaptrack).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: portico::alloc::MiMalloc = portico::alloc::MiMalloc;

use portico::app;
use portico::config::{ArgsError, Config, Mode};
use portico::shutdown::Phase;

fn main() -> ExitCode {
    // `inject` edits manifests: none of the proxy's options, logging or runtime.
    // Its own parser also answers `portico help inject`.
    let arg = |n| std::env::args_os().nth(n);
    if arg(1).is_some_and(|a| a == "inject") {
        return portico::inject::main(std::env::args_os());
    }
    if arg(1).is_some_and(|a| a == "help") && arg(2).is_some_and(|a| a == "inject") {
        return portico::inject::main(["portico", "inject", "--help"].map(Into::into));
    }
    let (mode, cfg) = match Config::from_args(std::env::args_os()) {
        Ok(v) => v,
        Err(ArgsError::Clap(e)) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
        Err(ArgsError::Config(e)) => {
            eprintln!("portico: {e}");
            return ExitCode::from(2);
        }
    };
    portico::telemetry::init_logging(cfg.log_format, &cfg.log_level);
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }

    if mode == Mode::Check {
        return match app::load(&cfg) {
            Ok(loaded) => {
                use std::io::Write as _;
                // A closed stdout (`portico check | head -1`) is not an error worth a panic.
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{}", app::summary(&cfg, &loaded));
                if loaded.warnings.is_empty() {
                    let _ = writeln!(out, "ok");
                    ExitCode::SUCCESS
                } else {
                    for w in &loaded.warnings {
                        eprintln!("portico: {w}");
                    }
                    ExitCode::from(2)
                }
            }
            Err(e) => {
                eprintln!("portico: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }

    let runtime = match app::runtime(cfg.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portico: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // Installed before anything is bound, so a SIGTERM that arrives while
        // the admin server already answers is a drain, never the default
        // disposition (death by signal).
        let signals = match Signals::install() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                None
            }
        };
        let app = match app::build(cfg).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("portico: {e}");
                return ExitCode::from(e.exit_code() as u8);
            }
        };
        tracing::info!(
            tls = %app.tls_addr,
            admin = %app.admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            version = env!("CARGO_PKG_VERSION"),
            "portico is serving"
        );
        if let Some(signals) = signals {
            spawn_signal_handler(&app, signals);
        }
        app.run().await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM, SIGINT and SIGHUP streams; signals arriving before the handler runs wait in them.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

fn spawn_signal_handler(app: &app::App, signals: Signals) {
    let drain = app.drain.clone();
    let reloader = app.reloader.clone();
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    tokio::spawn(async move {
        let mut drains = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading certificates");
                    let r = reloader.clone();
                    let outcome = tokio::task::spawn_blocking(move || r.reload_all()).await;
                    tracing::info!(?outcome, "SIGHUP reload done");
                    continue;
                }
            }
            drains += 1;
            // The first signal drains even when `POST /shutdown` (e.g. a preStop
            // hook) already began the drain: only a second signal cuts it short.
            if drains == 1 {
                if drain.phase() == Phase::Running {
                    tracing::info!("signal received: draining (a second signal exits at once)");
                } else {
                    tracing::info!(
                        "signal received: already draining (a second signal exits at once)"
                    );
                }
                drain.advance(Phase::Draining);
            } else {
                let n = drain.requests.load(std::sync::atomic::Ordering::Acquire);
                tracing::warn!(requests_cut = n, "second signal: exiting at once");
                std::process::exit(0);
            }
        }
    });
}
