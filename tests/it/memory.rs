//! What the portico process keeps resident: little when idle, and little
//! more in pooled upstream connections after large downloads.

use crate::support::*;

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

/// An idle portico's own memory (anonymous pages: heap, stacks; not the
/// mapped binary) is small. mimalloc asked for transparent huge pages for
/// its arena, which made 12 MiB of it resident at once: 13 MiB in all against
/// 1.4 MiB with `no_thp` (release build, 2 workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_portico_keeps_under_6_mib_of_anonymous_memory() {
    let up = sleepy_upstream().await;
    let bin = Bin::start(&up.url(), &[]).await;
    let mut c = bin.h1().await;
    let got = collect(c.send_request(h1_get("/sleep/0")).await.expect("response")).await;
    assert_eq!(got.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = bin.child.id().expect("running");
    let anon = status_kib(pid, "RssAnon");
    println!(
        "idle portico: RssAnon {anon} KiB, VmRSS {} KiB",
        vm_rss_kib(pid)
    );
    // With THP "always" the kernel backs any aligned region with huge pages,
    // asked or not; the bound is for the usual "madvise" (and "never").
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[always]") {
        println!("transparent huge pages are [always] here: bound not checked");
        return;
    }
    assert!(anon <= 6 * 1024, "RssAnon {anon} KiB");
}

/// One request on each connection, all at once; every answer must be 200
/// with a body of `len` bytes.
async fn round(
    clients: &mut [hyper::client::conn::http1::SendRequest<Full<Bytes>>],
    path: &str,
    len: usize,
) {
    let calls = clients.iter_mut().map(|c| async move {
        c.ready().await.expect("connection ready");
        let got = collect(c.send_request(h1_get(path)).await.expect("response")).await;
        assert_eq!(
            (got.status, got.body.len()),
            (StatusCode::OK, len),
            "{path}"
        );
    });
    futures_util::future::join_all(calls).await;
}

/// A pooled upstream connection keeps the buffer its reads grew to while it
/// waits for its next request, so what it may read at once bounds what idle
/// connections hold: after 32 concurrent 2 MiB downloads, each on its own
/// upstream connection, idle portico holds at most 32 MiB more than after the
/// same 32 connections carried small answers. With 64 KiB reads it held
/// 10-13 MiB more (most of it what mimalloc keeps of the burst's freed
/// buffers: 4.5 MiB with the system allocator); with 1 MiB reads, 83 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_upstream_connections_keep_little_memory_after_large_downloads() {
    const BIG: usize = 2 << 20;
    let big = Bytes::from(vec![b'x'; BIG]);
    let up = upstream_with(false, move |s| {
        let body = if s.uri.path() == "/big" {
            big.clone()
        } else {
            Bytes::from_static(b"ok")
        };
        async move {
            // All 32 exchanges overlap: each needs its own upstream connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::new(Full::new(body))
        }
    })
    .await;
    let bin = Bin::start(&up.url(), &[]).await;
    let pid = bin.child.id().expect("running");
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(bin.h1().await);
    }
    for _ in 0..2 {
        round(&mut clients, "/small", 2).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = vm_rss_kib(pid);
    for _ in 0..3 {
        round(&mut clients, "/big", BIG).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = vm_rss_kib(pid);
    println!("portico RSS {base} KiB after small answers, {after} KiB after large downloads");
    assert!(
        after <= base + 32 * 1024,
        "idle portico grew from {base} KiB to {after} KiB"
    );
}
