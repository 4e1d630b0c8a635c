//! The `portico` binary: parse the configuration (exit 2 naming the option),
//! start (exit 2 for bad certificates, 1 for anything else), run until drained.

use std::process::ExitCode;

/// mimalloc: per-thread free lists suit a proxy's many short-lived buffers;
/// measured in benches/README.md. `--no-default-features` builds with the
/// system allocator instead, for heap profilers that hook malloc (heaptrack).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mi::MiMalloc = mi::MiMalloc;

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
mod mi {
    use libmimalloc_sys::{
        mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
        mi_zalloc_aligned,
    };
    use std::alloc::{GlobalAlloc, Layout};
    use std::ffi::c_void;

    /// mimalloc through its plain `malloc` entry points where they already
    /// give the alignment asked for.
    ///
    /// The `mimalloc` crate sends every allocation to `mi_malloc_aligned`,
    /// whose fast path only covers blocks up to 1 KiB: larger ones whose size
    /// is not a power of two (hyper's and rustls's buffers) take its
    /// over-allocating fallback even when asked for alignment 1. callgrind
    /// counted about 1,400 instructions a request in it under S2.
    pub struct MiMalloc;

    /// Whether `mi_malloc(size)` is already aligned to `align`. Its size
    /// classes are multiples of 8, and of 16 above 16, laid out from 16-byte
    /// aligned page starts (`MI_MAX_ALIGN_SIZE`, C's `max_align_t`), so any
    /// block is 8-aligned and a block of a multiple of 16 bytes 16-aligned.
    fn plain(align: usize, size: usize) -> bool {
        align <= 8 || (align == 16 && size % 16 == 0)
    }

    // SAFETY: every pointer handed out comes from mimalloc with at least the
    // layout's size and alignment, and goes back to mimalloc's `mi_free`,
    // which takes blocks from both the plain and the aligned entry points.
    unsafe impl GlobalAlloc for MiMalloc {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: plain C calls; a null return is the GlobalAlloc contract's error.
            unsafe {
                if plain(layout.align(), layout.size()) {
                    mi_malloc(layout.size()).cast()
                } else {
                    mi_malloc_aligned(layout.size(), layout.align()).cast()
                }
            }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as in `alloc`.
            unsafe {
                if plain(layout.align(), layout.size()) {
                    mi_zalloc(layout.size()).cast()
                } else {
                    mi_zalloc_aligned(layout.size(), layout.align()).cast()
                }
            }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            // SAFETY: `ptr` came from this allocator (the caller's contract).
            unsafe { mi_free(ptr.cast::<c_void>()) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: `ptr` came from this allocator; mimalloc keeps the
            // alignment asked for here across the move.
            unsafe {
                if plain(layout.align(), new_size) {
                    mi_realloc(ptr.cast::<c_void>(), new_size).cast()
                } else {
                    mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Every block, plain or aligned, fresh or moved, has its layout's
        /// alignment: the plain path is only taken where mimalloc's size
        /// classes give it.
        #[test]
        fn every_allocation_has_the_alignment_asked_for() {
            let a = MiMalloc;
            for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let mut live = Vec::new();
                for size in (1..=2100).step_by(7).chain([align, 3 * align, 65_536 + 24]) {
                    let Ok(layout) = Layout::from_size_align(size, align) else {
                        continue;
                    };
                    for zeroed in [false, true] {
                        // SAFETY: non-zero size; freed below with the same allocator.
                        let p = unsafe {
                            if zeroed {
                                a.alloc_zeroed(layout)
                            } else {
                                a.alloc(layout)
                            }
                        };
                        assert!(!p.is_null(), "{size} bytes aligned {align}");
                        assert_eq!(p as usize % align, 0, "{size} bytes aligned {align}");
                        if zeroed {
                            // SAFETY: `p` holds `size` initialised (zeroed) bytes.
                            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                            assert!(bytes.iter().all(|&b| b == 0), "{size} bytes zeroed");
                        }
                        // SAFETY: `p` is live with `layout`; the new size is non-zero.
                        let q = unsafe { a.realloc(p, layout, size * 2 + 5) };
                        assert!(!q.is_null());
                        assert_eq!(
                            q as usize % align,
                            0,
                            "{size} -> {} aligned {align}",
                            size * 2 + 5
                        );
                        live.push((q, Layout::from_size_align(size * 2 + 5, align).ok()));
                    }
                }
                for (q, layout) in live {
                    if let Some(layout) = layout {
                        // SAFETY: `q` came from `realloc` above with this layout.
                        unsafe { a.dealloc(q, layout) };
                    }
                }
            }
        }
    }
}

use portico::app;
use portico::config::{ArgsError, Config, Mode};
use portico::shutdown::Phase;

fn main() -> ExitCode {
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

    // One worker: a current-thread runtime, with no work-stealing machinery to pay for.
    let mut builder = if cfg.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.workers);
        b
    };
    let runtime = match builder.enable_all().build() {
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
