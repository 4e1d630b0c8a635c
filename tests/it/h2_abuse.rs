//! HTTP/2 abuse with hand-written frames: rapid reset, CONTINUATION floods,
//! SETTINGS and PING floods, a client that never reads, a window that never
//! opens. The offending connection is closed within a bound, memory stays
//! bounded, and a healthy client on another connection keeps being served.
//! Each test measures the process, so it runs alone.

use crate::support::h2raw::{self, RawH2, ENHANCE_YOUR_CALM};
use crate::support::*;

use std::time::Instant;

/// CVE-2023-44487 (rapid reset): 5,000 streams opened and reset at once. The
/// offending connection is closed (GOAWAY ENHANCE_YOUR_CALM, or EOF) within a
/// bound, a healthy client on another connection keeps its answers under
/// 500 ms, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_closes_the_connection_and_others_stay_served() {
    let _alone = alone().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut c = RawH2::open(&p, &[], true).await;
    let block = h2raw::request(false, "/rapid", &[]);
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut sent = 0u32;
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        buf.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            id,
            &block,
        ));
        buf.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
        sent = i + 1;
        if buf.len() >= 32 * 1024 {
            if !c.send(&buf).await {
                break;
            }
            buf.clear();
        }
    }
    let _ = c.send(&buf).await;
    let took = c
        .closed_within(started, MS(5000))
        .await
        .expect("the offending connection is closed within 5s");
    let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
    assert_eq!(
        seen.goaway,
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY ENHANCE_YOUR_CALM after {sent} streams, {took:?}"
    );
    let rapid = up
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.uri.path() == "/rapid")
        .count();
    assert!(
        rapid <= 64,
        "{rapid} of {sent} reset streams reached the upstream"
    );
    prober.finish(MS(500)).await;
    assert_eq!(p.get("/after").await.status, 200, "served after the attack");
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// CVE-2024-27316 class (CONTINUATION flood): a HEADERS frame without
/// END_HEADERS followed by CONTINUATION frames without end, either carrying an
/// ever-growing header value or empty. The connection is closed within a
/// bound, memory stays bounded, other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_closes_the_connection_and_others_stay_served() {
    let _alone = alone().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    for empty in [false, true] {
        let mut c = RawH2::open(&p, &[], true).await;
        let mut block = h2raw::request(false, "/cont", &[]);
        // A literal whose value claims 100 MB, its bytes to follow.
        block.push(0);
        h2raw::int(&mut block, 7, 0, 7);
        block.extend_from_slice(b"x-flood");
        h2raw::int(&mut block, 7, 0, 100_000_000);
        let started = Instant::now();
        let mut ok = c
            .send(&h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &block))
            .await;
        let filler = vec![b'a'; if empty { 0 } else { 16 * 1024 }];
        let one = h2raw::frame(h2raw::CONTINUATION, 0, 1, &filler);
        let batch: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * if empty { 4096 } else { 4 })
            .collect();
        let mut frames = 0;
        while ok && frames < 200_000 && started.elapsed() < MS(4000) {
            ok = c.send(&batch).await;
            frames += batch.len() / one.len();
        }
        let took = c.closed_within(started, MS(5000)).await.unwrap_or_else(|| {
            panic!("empty={empty}: connection closed within 5s ({frames} frames sent)")
        });
        let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
        assert_eq!(
            seen.goaway,
            Some(ENHANCE_YOUR_CALM),
            "empty={empty}: GOAWAY ENHANCE_YOUR_CALM after {frames} frames, {took:?}"
        );
        assert!(seen.heads.is_empty(), "no response to an unfinished head");
    }
    let paths: Vec<String> = up
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/probe"),
        "no flood request reached the upstream: {paths:?}"
    );
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// SETTINGS and PING floods from a client that reads: h2 answers each ACK in
/// turn and reads no further while one is unsent, so the flood costs what the
/// client itself reads. Memory stays bounded, a healthy client is served, and
/// the connection, which never sent a request, is closed by
/// `--header-read-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_settings_and_ping_floods_stay_bounded_and_others_stay_served() {
    let _alone = alone().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(1000);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    for ping in [false, true] {
        let mut c = RawH2::open(&p, &[], true).await;
        let one = if ping {
            h2raw::frame(h2raw::PING, 0, 0, b"pingpong")
        } else {
            h2raw::settings(&[(0x2, 0), (0x4, 65535)])
        };
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let started = Instant::now();
        let mut sent = 0;
        while sent < 50_000 && c.send(&batch).await {
            sent += 1000;
        }
        let flood_took = started.elapsed();
        let took = c
            .closed_within(started, MS(4000))
            .await
            .unwrap_or_else(|| panic!("ping={ping}: closed within 4s"));
        let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
        assert!(
            seen.frames > sent,
            "ping={ping}: each of the {sent} frames got its ACK ({} frames back, flood took {flood_took:?})",
            seen.frames
        );
        assert_eq!(seen.goaway, Some(0), "ping={ping}: GOAWAY NO_ERROR");
        // --header-read-timeout, then as long again for the close to finish:
        // this client never answers the PING that follows the GOAWAY.
        assert!(
            took >= MS(1800) && took < MS(3500),
            "ping={ping}: closed after {took:?}"
        );
    }
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// A PING flood from a client that never reads: h2 stops reading it once its
/// answers cannot be written. When `--header-read-timeout` sends it GOAWAY,
/// that GOAWAY cannot be written either; the connection is still closed
/// (not held forever, holding a `--max-connections` slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_flood_from_a_client_that_never_reads_is_closed() {
    let _alone = alone().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(500);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut c = RawH2::open(&p, &[], false).await;
    let one = h2raw::frame(h2raw::PING, 0, 0, b"pingpong");
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let started = Instant::now();
    let mut sent = 0;
    while sent < 2_000_000 && c.send(&batch).await {
        sent += 1000;
    }
    assert!(sent < 2_000_000, "portico stopped taking the flood");
    eventually(MS(4000), "the non-reading connection is closed", || async {
        (p.metrics.connections_open.get() == 1).then_some(())
    })
    .await;
    // --header-read-timeout, then as long again for the GOAWAY to go out.
    assert!(
        started.elapsed() < MS(3000),
        "closed after {:?}",
        started.elapsed()
    );
    c.start_reading.notify_one();
    assert!(
        c.closed_within(started, MS(8000)).await.is_some(),
        "the client sees the close"
    );
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// A client whose flow-control window never opens (no WINDOW_UPDATE, ever)
/// asking for 1 MiB: it gets the first 65,535 bytes, then, as the body moves
/// no byte for `--body-timeout`, its connection and the upstream's are
/// closed; the upstream connection is not held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_window_that_never_opens_is_cut_after_body_timeout() {
    let _alone = alone().await;
    let (up, mut up_closed) = big_upstream(1 << 20).await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(500);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut c = RawH2::open(&p, &[], true).await;
    let started = Instant::now();
    assert!(
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            1,
            &h2raw::request(false, "/big", &[]),
        ))
        .await
    );
    let took = c
        .closed_within(started, MS(5000))
        .await
        .expect("the stalled connection is closed within 5s");
    let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
    assert_eq!(seen.heads, [(1, 0x88)], "a 200 head on stream 1");
    assert_eq!(
        seen.data.get(&1),
        Some(&65_535),
        "exactly the initial window"
    );
    assert!(took >= MS(450), "not before --body-timeout: {took:?}");
    let at = tokio::time::timeout(MS(3000), up_closed.recv())
        .await
        .expect("the upstream connection is closed")
        .expect("upstream");
    assert!(
        at - started < MS(4000),
        "upstream closed after {:?}",
        at - started
    );
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}
