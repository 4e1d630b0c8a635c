//! Certificate rotation. Kubernetes updates a mounted Secret by writing a new
//! hidden directory and swapping the `..data` symlink, which replaces the
//! watched paths themselves; so the reloader watches each file's *directory*,
//! reacts to any event there (debounced), re-reads on every poll interval in
//! case events were lost, and compares content, never modification times.
//! A pair is taken only whole and valid; otherwise the last good one stays.
//!
//! It sits beside the request path, as `admin` does: it writes into two
//! stages, the server certificates into [`certs`](crate::certs)' slots and
//! the client CA into [`tls`](crate::tls)'s acceptor, so neither of those
//! imports the other for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;

use crate::certs::load::{fmt_unix, from_pem, unix_now, LoadedCert};
use crate::certs::{CertStore, Slot};
use crate::telemetry::{Metrics, NameLabel};
use crate::tls::{ClientPolicy, TlsAcceptor};

/// Re-reads certificate sources and swaps in good new pairs.
pub struct Reloader {
    store: Arc<CertStore>,
    tls: Arc<TlsAcceptor>,
    client: Option<ClientPolicy>,
    metrics: Arc<Metrics>,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last content that failed, per source, so a bad file is reported
    /// once per change rather than on every poll.
    failed: HashMap<PathBuf, (Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
    ca_failed: Option<Vec<u8>>,
}

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Pairs swapped in.
    pub reloaded: usize,
    /// Changes refused.
    pub failed: usize,
}

impl Reloader {
    /// A reloader over the store and acceptor in service.
    pub fn new(
        store: Arc<CertStore>,
        tls: Arc<TlsAcceptor>,
        client: Option<ClientPolicy>,
        metrics: Arc<Metrics>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        let ca = client.as_ref().and_then(|c| std::fs::read(&c.ca).ok());
        Self {
            store,
            tls,
            client,
            metrics,
            provider,
            state: Mutex::new(State {
                ca,
                ..State::default()
            }),
        }
    }

    /// The directories to watch: each certificate, key and CA file's parent.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let files = self
            .store
            .slots()
            .iter()
            .filter_map(|s| s.source.as_ref())
            .flat_map(|s| [s.cert.clone(), s.key.clone()])
            .chain(self.client.iter().map(|c| c.ca.clone()));
        for f in files {
            let dir = f
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Re-reads every source once; swaps what changed and is good.
    pub fn reload_all(&self) -> Outcome {
        let mut out = Outcome::default();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        for slot in self.store.slots() {
            let Some(src) = &slot.source else { continue };
            let (cert, key) = match read_pair(&src.cert, &src.key) {
                (Ok(c), Ok(k)) => (c, k),
                (Err(e), _) | (_, Err(e)) => {
                    let marker = (Vec::new(), e.to_string().into_bytes());
                    if state.failed.get(&src.cert) != Some(&marker) {
                        tracing::error!(cert = %src.cert.display(), key = %src.key.display(), error = %e,
                            "certificate reload failed: cannot read; the previous certificate stays in service");
                        self.metrics.reload(false);
                        out.failed += 1;
                        state.failed.insert(src.cert.clone(), marker);
                    }
                    continue;
                }
            };
            let current = slot.current.load();
            if current.raw.0 == cert && current.raw.1 == key {
                state.failed.remove(&src.cert);
                continue;
            }
            if state.failed.get(&src.cert) == Some(&(cert.clone(), key.clone())) {
                continue;
            }
            let candidate = from_pem(
                cert.clone(),
                key.clone(),
                &src.cert,
                &src.key,
                &self.provider,
            )
            .map_err(|e| e.to_string())
            .and_then(|c| match c.validity_problem(now) {
                Some(p) => Err(p),
                None => Ok(c),
            });
            match candidate {
                Ok(new) => {
                    self.swap(slot, &current, new);
                    state.failed.remove(&src.cert);
                    out.reloaded += 1;
                }
                Err(why) => {
                    tracing::error!(cert = %src.cert.display(), error = %why,
                        "certificate reload failed; the previous certificate stays in service");
                    self.metrics.reload(false);
                    state.failed.insert(src.cert.clone(), (cert, key));
                    out.failed += 1;
                }
            }
        }
        if let Some(policy) = &self.client {
            match std::fs::read(&policy.ca) {
                Ok(ca)
                    if state.ca.as_ref() == Some(&ca) || state.ca_failed.as_ref() == Some(&ca) => {}
                Ok(ca) => match self.tls.set_client_policy(Some(policy)) {
                    Ok(()) => {
                        tracing::info!(ca = %policy.ca.display(), "client CA reloaded; sessions from before cannot resume");
                        self.metrics.reload(true);
                        state.ca = Some(ca);
                        state.ca_failed = None;
                        out.reloaded += 1;
                    }
                    Err(e) => {
                        tracing::error!(ca = %policy.ca.display(), error = %e,
                            "client CA reload failed; the previous CA stays in service");
                        self.metrics.reload(false);
                        state.ca_failed = Some(ca);
                        out.failed += 1;
                    }
                },
                Err(e) => {
                    if state.ca_failed.as_deref() != Some(b"") {
                        tracing::error!(ca = %policy.ca.display(), error = %e,
                            "client CA reload failed: cannot read; the previous CA stays in service");
                        self.metrics.reload(false);
                        state.ca_failed = Some(Vec::new());
                        out.failed += 1;
                    }
                }
            }
        }
        out
    }

    fn swap(&self, slot: &Slot, old: &LoadedCert, new: LoadedCert) {
        let old_label = old.label();
        let new_label = new.label();
        let still_served = self
            .store
            .slots()
            .iter()
            .any(|s| !std::ptr::eq(s, slot) && s.current.load().label() == old_label);
        if old_label != new_label && !still_served {
            self.metrics
                .cert_not_after
                .remove(&NameLabel { name: old_label });
        }
        self.metrics
            .cert_not_after
            .get_or_create(&NameLabel {
                name: new_label.clone(),
            })
            .set(new.not_after);
        tracing::info!(name = %new_label, not_after = %fmt_unix(new.not_after),
            "certificate reloaded; new handshakes use it");
        slot.current.store(Arc::new(new));
        self.metrics.reload(true);
    }

    /// Runs forever: reloads on file events (debounced), on `trigger`, and every `poll`.
    pub async fn run(
        self: Arc<Self>,
        poll: Duration,
        watch: bool,
        mut trigger: mpsc::Receiver<()>,
        events_tx: mpsc::Sender<()>,
    ) {
        // Kept alive for as long as this task runs.
        let watcher = if watch {
            self.start_watcher(events_tx.clone())
        } else {
            None
        };
        // Without a watcher the channel must stay open, or `recv` would end the loop.
        let _keep_open = events_tx;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A change made between the load at start and the watch being in place
        // raised no event: look once now rather than at the first poll.
        if watcher.is_some() {
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_all()).await;
        }
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                got = trigger.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // The kubelet writes several entries per update: let it finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while trigger.try_recv().is_ok() {}
                }
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_all()).await;
        }
    }

    fn start_watcher(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let mut watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    if !ev.kind.is_access() {
                        let _ = tx.try_send(());
                    }
                }
            },
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch certificate files; relying on --cert-poll-interval");
                return None;
            }
        };
        for dir in self.watched_dirs() {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "cannot watch directory; relying on --cert-poll-interval");
            }
        }
        Some(watcher)
    }
}

/// Reads a certificate and its key as one consistent pair. The kubelet swaps
/// `..data` atomically, but two reads through it can straddle a swap (old
/// certificate, new key): when the certificate changed meanwhile, read again.
fn read_pair(cert: &Path, key: &Path) -> (std::io::Result<Vec<u8>>, std::io::Result<Vec<u8>>) {
    let mut tries = 0;
    loop {
        let c = std::fs::read(cert);
        let k = std::fs::read(key);
        tries += 1;
        match (&c, &k) {
            (Ok(first), Ok(_)) if tries < 3 => match std::fs::read(cert) {
                Ok(again) if &again != first => continue,
                _ => return (c, k),
            },
            _ => return (c, k),
        }
    }
}

/// Paths that will never rotate: a file bind-mounted on its own (a Secret
/// mounted with `subPath`), which the kubelet never updates.
pub fn unrotatable(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount_points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    let in_k8s = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    paths
        .iter()
        .filter(|p| {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let file_mount = mount_points
                .iter()
                .any(|m| Path::new(m) == p.as_path() || Path::new(m) == abs);
            let no_data_link = p.parent().is_some_and(|d| !d.join("..data").exists());
            file_mount || (in_k8s && no_data_link)
        })
        .cloned()
        .collect()
}
