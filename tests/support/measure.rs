//! For tests that measure this process (its resident memory, a healthy
//! client's latency under a flood): they run alone, so that no other test's
//! memory or load is charged to them.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Portico, MS};

/// Held shared by every in-process portico and portico process a test runs
/// (see [`shared`]), exclusively by a test that measures (see [`alone`]).
static SERIAL: RwLock<()> = RwLock::const_new(());

thread_local! {
    /// The shared hold of the test running on this thread, while anything
    /// keeps it: a test takes at most one, so a second portico of the same
    /// test never queues behind a waiting [`alone`] that waits for the first.
    static HELD: RefCell<Weak<RwLockReadGuard<'static, ()>>> = const { RefCell::new(Weak::new()) };
    /// Set while the test on this thread holds [`SERIAL`] exclusively.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// A shared hold on [`SERIAL`]: while it lives, no test runs [`alone`].
pub type Shared = Option<Arc<RwLockReadGuard<'static, ()>>>;

/// Takes (or joins) this test's shared hold; `None` when the test runs alone.
/// libtest runs each test on a thread of its own: call this from the test's
/// body (as `start` and `Bin::start` do), not from a task it spawns.
pub async fn shared() -> Shared {
    if ALONE.with(Cell::get) {
        return None;
    }
    if let Some(held) = HELD.with(|h| h.borrow().upgrade()) {
        return Some(held);
    }
    let held = Arc::new(SERIAL.read().await);
    HELD.with(|h| *h.borrow_mut() = Arc::downgrade(&held));
    Some(held)
}

/// An exclusive hold on [`SERIAL`]: no other test runs a portico meanwhile.
pub struct Alone {
    _hold: RwLockWriteGuard<'static, ()>,
}

/// Waits until no other test holds a portico, then keeps them all out until
/// the returned hold is dropped. Call it first, before this test starts its
/// own portico (which then takes no shared hold).
pub async fn alone() -> Alone {
    assert!(
        HELD.with(|h| h.borrow().upgrade().is_none()),
        "alone() comes before the test starts a portico"
    );
    let hold = SERIAL.write().await;
    ALONE.with(|a| a.set(true));
    Alone { _hold: hold }
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// This process's resident set size in KiB.
pub fn rss_kib() -> u64 {
    vm_rss_kib(std::process::id())
}

/// The resident set size of process `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// One memory figure of a process (`VmRSS`, `RssAnon`, ...) from
/// `/proc/PID/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A healthy HTTP/1.1 keep-alive client on its own connection, opened before
/// the attack, sending a request every 10 ms and timing each answer.
pub struct Prober {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Duration, Vec<String>)>,
}

impl Prober {
    /// Opens its connection and starts probing.
    pub async fn start(p: &Portico) -> Self {
        let mut c = p.h1().await;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut n, mut worst, mut failures) = (0, Duration::ZERO, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let req = Request::get("/probe")
                    .header("host", "localhost")
                    .body(Full::new(Bytes::new()))
                    .expect("req");
                let started = Instant::now();
                match tokio::time::timeout(MS(2000), async {
                    let r = c.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = r.status();
                    r.into_body().collect().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(status)
                })
                .await
                {
                    Ok(Ok(s)) if s == 200 => {}
                    Ok(Ok(s)) => failures.push(format!("status {s}")),
                    Ok(Err(e)) => failures.push(e),
                    Err(_) => failures.push("no answer within 2s".into()),
                }
                worst = worst.max(started.elapsed());
                n += 1;
                if !failures.is_empty() {
                    break;
                }
                tokio::time::sleep(MS(10)).await;
            }
            (n, worst, failures)
        });
        Self { stop, task }
    }

    /// Stops probing and checks every answer was a 200 within `bound`.
    /// Probing goes on for 300 ms after the attack first.
    pub async fn finish(self, bound: Duration) -> usize {
        tokio::time::sleep(MS(300)).await;
        self.stop.store(true, Ordering::Relaxed);
        let (n, worst, failures) = tokio::time::timeout(MS(3000), self.task)
            .await
            .expect("prober stops")
            .expect("prober task");
        assert!(failures.is_empty(), "healthy client failed: {failures:?}");
        assert!(n >= 5, "healthy client made only {n} requests");
        assert!(
            worst < bound,
            "healthy client's slowest answer took {worst:?} (bound {bound:?}, {n} requests)"
        );
        n
    }
}
