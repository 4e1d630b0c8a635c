#!/usr/bin/env python3
"""Where S2's tail comes from, in a BENCH_TRACE file of benches/load.rs (one
`# LABEL` line per run, then `CONN DONE_US LATENCY_US` per request).

For each run: p50/p99, how evenly the connections were served, and the
"waves": 10 ms slices of the run in which requests at or above the run's p99
ended, with how many streams and connections they held and when those
requests had started. A wave that holds a batch of streams which started
within a few ms of each other and all ended 30-90 ms later is a stall of the
whole loop (client, proxy or upstream), not one slow connection.

    BENCH_TRACE=/tmp/s2.trace SCENARIOS=S2 REPORT=0 bash benches/compare.sh
    python3 benches/waves.py /tmp/s2.trace
"""
import statistics
import sys
from collections import Counter, defaultdict


def runs(path):
    out = []
    for line in open(path):
        if line.startswith("#"):
            out.append((line[1:].strip(), []))
        elif line.strip() and out:
            conn, done, took = map(int, line.split())
            out[-1][1].append((conn, done, took))
    return out


def waves(rows, p99):
    """Runs of adjacent 10 ms slices in which requests >= p99 ended."""
    slices = defaultdict(list)
    for r in rows:
        if r[2] >= p99:
            slices[r[1] // 10_000].append(r)
    groups, cur = [], []
    for k in sorted(slices):
        if cur and k > cur[-1] + 2:
            groups.append(cur)
            cur = []
        cur.append(k)
    if cur:
        groups.append(cur)
    return [[r for k in g for r in slices[k]] for g in groups]


def main():
    for label, rows in runs(sys.argv[1]):
        if not rows:
            continue
        lat = sorted(r[2] for r in rows)
        n = len(lat)
        p50, p99 = lat[n // 2], lat[min(n - 1, int(0.99 * n))]
        per_conn = defaultdict(list)
        for r in rows:
            per_conn[r[0]].append(r[2])
        meds = [statistics.median(v) for v in per_conn.values()]
        ws = waves(rows, p99)
        print(f"{label}: {n} requests, p50 {p50 / 1000:.1f} ms, p99 {p99 / 1000:.1f} ms; "
              f"connections' median latencies {min(meds) / 1000:.1f}-{max(meds) / 1000:.1f} ms; "
              f"{len(ws)} waves hold every request >= p99")
        for w in ws:
            started = sorted((r[1] - r[2]) // 1000 for r in w)
            ended = sorted(r[1] // 1000 for r in w)
            conns = Counter(r[0] for r in w)
            print(f"  ended {ended[0]}-{ended[-1]} ms: {len(w)} requests on {len(conns)} "
                  f"connections, started {started[0]}-{started[-1]} ms, "
                  f"longest {max(r[2] for r in w) / 1000:.1f} ms")


if __name__ == "__main__":
    main()
