#!/usr/bin/env python3
"""Aggregates benches/load.rs JSON lines (one per scenario, proxy and round)
into medians and portico/peer ratios; rewrites the results section of
benches/README.md and draws benches/results.svg. Standard library only.

    python3 benches/report.py results.jsonl --readme benches/README.md --svg benches/results.svg
"""
import argparse
import json
import statistics
from collections import defaultdict
from html import escape

ORDER = ["S1", "S1W", "S1R", "S2", "S2R", "S2H", "S3E", "S3R", "S3T", "S4D", "S4U", "S5"]
NAMES = {
    "S1": "S1 HTTP/1.1 keep-alive, 64 conns",
    "S1W": "S1 by wrk (same load)",
    "S1R": "S1R HTTP/1.1, fixed offered load",
    "S2": "S2 HTTP/2, 16 conns x 32 streams",
    "S2R": "S2R HTTP/2, fixed offered load",
    "S2H": "S2 by h2load (same load)",
    "S3E": "S3 new TLS 1.3 conn, ECDSA P-256",
    "S3R": "S3 new TLS 1.3 conn, RSA-2048",
    "S3T": "S3 resumed TLS 1.3 (ticket)",
    "S4D": "S4 1 MiB responses",
    "S4U": "S4 1 MiB uploads",
    "S5": "S5 idle TLS connections",
}
# The targets, as ratios to nginx in the same run: (figure, max ratio).
TARGETS = {
    "S1": [("cpu", 0.8)],
    "S1W": [("cpu", 0.8)],
    "S1R": [("p99", 0.85)],
    "S2": [("cpu", 0.75), ("p99", 1.0)],
    "S2H": [("cpu", 0.75), ("p99", 1.0)],
    "S3E": [("cpu", 0.4)],
    "S3R": [("cpu", 0.65)],
    "S4D": [("cpu", 0.7)],
    "S4U": [("cpu", 0.7)],
    "S5": [("cpu", 0.45)],
}
COLORS = {"portico": "#2b7bb9", "nginx": "#3a9a48", "haproxy": "#d9822b"}
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(path):
    runs = defaultdict(list)  # (scenario, label) -> [row]
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                runs[(r["scenario"], r["label"])].append(r)
    return runs


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def paired(runs, s, a, b, key):
    """The median of round-by-round ratios a/b: compare.sh runs the proxies in
    turn within each round, so a drift of the machine that lasts longer than a
    round cancels in each pair, which it does not between separate medians."""
    ra, rb = runs.get((s, a), []), runs.get((s, b), [])
    vals = [x[key] / y[key] for x, y in zip(ra, rb)
            if x.get(key) is not None and y.get(key)]
    return statistics.median(vals) if vals else None


def tables(runs, meta):
    labels = []
    for _, label in runs:
        if label not in labels:
            labels.append(label)
    labels.sort(key=lambda x: ["portico", "nginx", "haproxy"].index(x) if x in COLORS else 9)
    scen = [s for s in ORDER if any((s, l) in runs for l in labels)]
    peers = [l for l in labels if l != "portico"]
    summary = {}
    for s in scen:
        for l in labels:
            rows = runs.get((s, l), [])
            summary[(s, l)] = {
                "cpu": med(rows, "cpu"),
                "p99": med(rows, "p99_us"),
                "rps": med(rows, "rps"),
                "util": med(rows, "util"),
                "errors": sum(r["errors"] for r in rows),
                "rounds": len(rows),
                "unit": rows[0]["unit"] if rows else "",
                "note": rows[0]["note"] if rows else "",
                # Upstream connections the proxy opened in a run (warm-up included).
                "conns": med(rows, "upstream_conns"),
            }
    out = [f"Run: {meta}\n"]
    out.append("**Proxy CPU per unit of work** (median of rounds; lower is better; "
               "`core %` is how busy the proxy's core was):\n")
    head = "| scenario | unit | " + " | ".join(f"{l}" for l in labels) + " | " + \
        " | ".join(f"portico/{p}" for p in peers) + " | target vs nginx |"
    out.append(head)
    out.append("|" + "---|" * (3 + len(labels) + len(peers)))
    for s in scen:
        p = summary[(s, "portico")] if "portico" in labels else None
        cells = []
        for l in labels:
            m = summary[(s, l)]
            extra = f" ({m['util']:.0f}%)" if m["util"] else ""
            cells.append(fmt(m["cpu"]) + extra)
        rat = [fmt(ratio(p["cpu"], summary[(s, q)]["cpu"]) if p else None, 2) + "x" for q in peers]
        tgt = ", ".join(f"{'p99' if k == 'p99' else ('KiB' if s == 'S5' else 'CPU')} ≤ {v}x"
                        for k, v in TARGETS.get(s, []))
        out.append(f"| {NAMES[s]} | {summary[(s, labels[0])]['unit']} | " + " | ".join(cells) +
                   " | " + " | ".join(rat) + f" | {tgt} |")
    out.append("")
    out.append("**Latency p99 (ms) and throughput (req/s)**, medians:\n")
    head = "| scenario | " + " | ".join(f"{l} p99" for l in labels) + " | " + \
        " | ".join(f"p99 portico/{q}" for q in peers) + " | " + \
        " | ".join(f"{l} req/s" for l in labels) + " | " + \
        " | ".join(f"req/s portico/{q}" for q in peers) + " | errors |"
    out.append(head)
    out.append("|" + "---|" * (2 + 2 * len(labels) + 2 * len(peers)))
    for s in scen:
        if s == "S5":
            continue
        p = summary.get((s, "portico"))
        cells = [fmt(summary[(s, l)]["p99"] / 1000 if summary[(s, l)]["p99"] else None, 2) for l in labels]
        cells += [fmt(ratio(p["p99"], summary[(s, q)]["p99"]) if p else None, 2) + "x" for q in peers]
        cells += [fmt(summary[(s, l)]["rps"], 0) for l in labels]
        cells += [fmt(ratio(p["rps"], summary[(s, q)]["rps"]) if p else None, 2) + "x" for q in peers]
        errs = " ".join(f"{l}:{summary[(s, l)]['errors']}" for l in labels if summary[(s, l)]["errors"])
        out.append(f"| {s} | " + " | ".join(cells) + f" | {errs or '0'} |")
    out.append("")
    if "portico" in labels and "nginx" in labels:
        out.append("**Against the issue's targets** (ratio to nginx, same run; `met` is "
                   "judged on the ratio of medians; `paired` is the median of the rounds' "
                   "own ratios, shown beside it):\n")
        out.append("| scenario | figure | portico/nginx | paired | target | met |")
        out.append("|---|---|---|---|---|---|")
        key_of = {"cpu": "cpu", "p99": "p99_us"}
        for s in scen:
            for key, limit in TARGETS.get(s, []):
                r = ratio(summary[(s, "portico")][key], summary[(s, "nginx")][key])
                pr = paired(runs, s, "portico", "nginx", key_of[key])
                met = "–" if r is None else ("yes" if r <= limit else "**no**")
                unit = summary[(s, "portico")]["unit"]
                fig = "p99 latency" if key == "p99" else (unit if s == "S5" else f"CPU {unit}")
                out.append(f"| {NAMES[s]} | {fig} | {fmt(r, 2)}x | {fmt(pr, 2)}x | ≤ {limit}x "
                           f"| {met} |")
        for s2 in ("S2", "S2H"):
            if "haproxy" not in labels or (s2, "portico") not in summary:
                continue
            r = ratio(summary[(s2, "portico")]["cpu"], summary[(s2, "haproxy")]["cpu"])
            pr = paired(runs, s2, "portico", "haproxy", "cpu")
            met = "–" if r is None else ("yes" if r < 1 else "**no**")
            out.append(f"| {NAMES[s2]} | CPU below HAProxy | {fmt(r, 2)}x haproxy "
                       f"| {fmt(pr, 2)}x | < 1x | {met} |")
        out.append("")
    out.append("Scenario details (first round's note, per proxy where they differ):\n")
    for s in scen:
        notes = {l: summary[(s, l)]["note"] for l in labels}
        if len(set(notes.values())) == 1:
            out.append(f"- {s}: {notes[labels[0]]}")
        else:
            out.append(f"- {s}: " + "; ".join(f"**{l}**: {n}" for l, n in notes.items()))
    conns = {(s, l): summary[(s, l)]["conns"] for s in scen for l in labels
             if s != "S5" and summary[(s, l)]["conns"] is not None}
    if conns:
        out.append("")
        out.append("Upstream connections each proxy opened in a run (median of rounds, warm-up "
                   "included; a proxy that keeps its connections opens about as many as the "
                   "load has in flight once, and fewer when they are still open from the "
                   "round before):\n")
        out.append("| scenario | " + " | ".join(labels) + " |")
        out.append("|" + "---|" * (1 + len(labels)))
        for s in scen:
            if s == "S5":
                continue
            cells = [f"{conns[(s, l)]:,.0f}" if (s, l) in conns else "–" for l in labels]
            out.append(f"| {s} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out), summary, labels, scen


def svg(summary, labels, scen, meta):
    pw, ph, top, left = 150, 230, 70, 20
    w = left * 2 + pw * len(scen)
    h = top + ph + 70
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
         f'font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="bold">Proxy CPU per unit of work '
         f'(lower is better), one core, one worker</text>',
         f'<text x="{left}" y="40" fill="#555">{escape(meta)}</text>']
    lx = left
    for l in labels:
        o.append(f'<rect x="{lx}" y="50" width="10" height="10" fill="{COLORS.get(l, "#888")}"/>')
        o.append(f'<text x="{lx + 14}" y="59">{escape(l)}</text>')
        lx += 90
    for i, s in enumerate(scen):
        x0 = left + i * pw
        vals = [summary[(s, l)]["cpu"] or 0 for l in labels]
        vmax = max(vals) or 1
        base = top + ph
        bw = (pw - 30) / max(len(labels), 1)
        o.append(f'<line x1="{x0 + 8}" y1="{base}" x2="{x0 + pw - 8}" y2="{base}" stroke="#333"/>')
        for j, (l, v) in enumerate(zip(labels, vals)):
            bh = (ph - 30) * v / vmax
            bx = x0 + 15 + j * bw
            o.append(f'<rect x="{bx:.1f}" y="{base - bh:.1f}" width="{bw - 4:.1f}" height="{bh:.1f}" '
                     f'fill="{COLORS.get(l, "#888")}"><title>{escape(l)} {s}: {v:.1f}</title></rect>')
            o.append(f'<text x="{bx + (bw - 4) / 2:.1f}" y="{base - bh - 4:.1f}" text-anchor="middle" '
                     f'font-size="10">{fmt(v)}</text>')
        o.append(f'<text x="{x0 + pw / 2}" y="{base + 16}" text-anchor="middle" font-weight="bold">{s}</text>')
        unit = summary[(s, labels[0])]["unit"]
        o.append(f'<text x="{x0 + pw / 2}" y="{base + 30}" text-anchor="middle" fill="#555">{escape(unit)}</text>')
        short = NAMES[s].split(" ", 1)[1]
        o.append(f'<text x="{x0 + pw / 2}" y="{base + 44}" text-anchor="middle" fill="#555" '
                 f'font-size="8.5">{escape(short[:32])}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--readme")
    ap.add_argument("--svg")
    ap.add_argument("--meta", default="")
    a = ap.parse_args()
    runs = load(a.results)
    md, summary, labels, scen = tables(runs, a.meta)
    print(md)
    if a.svg:
        with open(a.svg, "w") as f:
            f.write(svg(summary, labels, scen, a.meta))
    if a.readme:
        with open(a.readme) as f:
            text = f.read()
        block = f"{BEGIN}\n{md}\n![CPU per unit of work](results.svg)\n{END}"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text += "\n" + block + "\n"
        with open(a.readme, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
