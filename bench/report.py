"""Turns herald-bench results (JSON lines) into docs/benchmarks.md and PNG charts.

Usage: report.py --results results.jsonl --meta meta.json --out benchmarks.md --charts DIR
"""

import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {
    "herald": "herald",
    "herald-durable": "herald (durable)",
    "socketio": "socket.io",
    "socketioxide": "socketioxide",
}
COLORS = {
    "herald": "#1f77b4",
    "herald-durable": "#6baed6",
    "socketio": "#ff7f0e",
    "socketioxide": "#2ca02c",
}
PEERS = ["socketio", "socketioxide"]

# DESIGN.md section 7.
TARGETS = {
    "idle": ("≤ 3 KB RSS per idle connection", lambda v: v <= 3000),
    "fanout": ("≤ 2.5 µs per delivery", lambda v: v <= 2.5),
    "burst": ("≤ 0.3 µs per delivery", lambda v: v <= 0.3),
    "unicast": ("volatile ≤ 2.5 µs per push incl. HTTP", lambda v: v <= 2.5),
    "unicast-durable": ("durable ≤ 10 µs per push incl. HTTP", lambda v: v <= 10),
    "latency": ("p99 ≤ 2 ms at 10k pushes/s (durable)", lambda v: v <= 2),
    "churn": ("≤ 20 µs per full handshake", lambda v: v <= 20),
}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def fmt(v, digits=2):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def ms(us):
    return None if us is None else us / 1000


def ratio(h, p):
    if h is None or p is None or p == 0:
        return "—"
    return f"{h / p:.2f}×"


class Doc:
    def __init__(self):
        self.lines = []

    def p(self, text=""):
        self.lines.append(text)

    def table(self, header, rows):
        self.p("| " + " | ".join(header) + " |")
        self.p("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            self.p("| " + " | ".join(str(c) for c in r) + " |")
        self.p()


def by(rows, scenario):
    return [r for r in rows if r.get("scenario") == scenario]


def servers_in(rows):
    order = ["herald", "herald-durable", "socketioxide", "socketio"]
    seen = {r["server"] for r in rows}
    return [s for s in order if s in seen] + sorted(seen - set(order))


def bars(ax, groups, series, values, ylabel, log=False):
    """Grouped bars: groups on x, one bar per series."""
    n = max(1, len(series))
    width = 0.8 / n
    for i, s in enumerate(series):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [values.get((s, g)) or 0 for g in groups]
        b = ax.bar(xs, ys, width, label=NAMES.get(s, s), color=COLORS.get(s))
        for rect, y in zip(b, ys):
            if y:
                ax.annotate(
                    fmt(y),
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([str(g) for g in groups])
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--charts", required=True)
    args = ap.parse_args()
    rows = load(args.results)
    meta = json.load(open(args.meta))
    os.makedirs(args.charts, exist_ok=True)
    rel = os.path.relpath(args.charts, os.path.dirname(os.path.abspath(args.out)))
    notes_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")

    d = Doc()
    summary = []  # (figure, {server: value}, target key, unit)
    misses = []

    d.p("# Benchmarks")
    d.p()
    d.p(
        "herald side by side with socket.io (Node) and socketioxide (Rust), each behind the "
        "same push endpoint and driven by the same load generator, `bench/herald-bench`, "
        "which speaks Socket.IO over WebSocket by hand. This file is written by "
        "`bench/run.sh` (the whole comparison, one command); `bench/run.sh --quick` runs "
        "small counts as a smoke check. Lower is better for every cost; a ratio is "
        "herald's figure divided by the peer's (below 1× herald is cheaper)."
    )
    d.p()
    if meta.get("mode") != "full":
        d.p(f"**This is a {meta.get('mode')} run: small counts, not for quoting.**")
        d.p()

    # ---- Conditions
    d.p("## Conditions")
    d.p()
    floors = {r["server"]: r["cpu_us_per_write"] for r in by(rows, "floor")}
    floor = None
    if floors:
        floor = sum(floors.values()) / len(floors)
    d.table(
        ["", ""],
        [
            ["date", meta.get("date")],
            ["kernel floor", "one 200-byte write to an established loopback TCP connection costs "
             + ", ".join(f"{fmt(v)} µs {k.replace('kernel-', '')} the run" for k, v in floors.items())
             + f" of CPU on the server's core, writing to each of {next(iter(by(rows, 'floor')))['connections']:,} "
             "connections in turn (`herald-bench floor`; on loopback the write also runs the receiving side's TCP input)"
             if floors else "not measured"],
            ["machine", f"{meta.get('nproc')} cores ({meta.get('cpu')}), {meta.get('memory')}, Linux {meta.get('kernel')}"],
            ["herald", f"commit {meta.get('herald_commit')}, release build"],
            ["socket.io", f"{meta.get('socketio')} (ws {meta.get('ws')} with bufferutil) on Node {meta.get('node')}"],
            ["socketioxide", f"{meta.get('socketioxide')} with axum 0.8, release build"],
            ["rustc", meta.get("rustc")],
            ["pinning", f"server on core {meta.get('server_cpu')}, load generator on core {meta.get('load_cpu')} (`taskset`)"
             + (f", both at nice {meta.get('nice')}" if meta.get("nice") else "")],
            ["load average (1, 5, 15 min)", f"before {meta.get('load_before')}; after {meta.get('load_after')}"],
            ["run time", f"{meta.get('seconds', 0) // 60} min {meta.get('seconds', 0) % 60} s"],
        ],
    )
    d.p(
        "Server CPU is user + system time of the server process (all its threads) from "
        "`/proc/PID/stat` over the measured window, divided by the work done; it is "
        "counted in 10 ms ticks, so every window is long enough (≥ 0.3 s of CPU) for the "
        "tick to matter by a few percent at most. RSS is `VmRSS` of the server process "
        "(user space: the kernel's ~4 KB of socket memory per connection comes on top). "
        "Everything runs over loopback on one machine, so the load generator's own work "
        "on the other core is part of every latency figure. A load average well above 1 "
        "before the run means other jobs shared the cores and the figures are noisier."
    )
    d.p()

    # ---- S1 idle
    idle = by(rows, "idle")
    d.p("## S1: idle connections")
    d.p()
    d.p(
        "One server process; the load generator opens connections (each a user: v4 "
        "`40{\"userId\"}` CONNECT; clients join their user room and `all`) in steps and "
        "reads the server's RSS 3 s after the last handshake of each step. Per connection "
        "= (RSS now − RSS before the first connection) ÷ connections. No heartbeat has "
        "happened yet (the interval is 25 s on every server)."
    )
    d.p()
    counts = sorted({r["connections"] for r in idle})
    vals = {(r["server"], r["connections"]): r["bytes_per_connection"] for r in idle}
    opened = {(r["server"], r["connections"]): r["open"] for r in idle}
    ss = servers_in(idle)
    hdr = ["connections"] + [f"{NAMES.get(s, s)} B/conn" for s in ss]
    hdr += [f"herald ÷ {NAMES[p]}" for p in PEERS if p in ss and "herald" in ss]
    trs = []
    for c in counts:
        row = [f"{c:,}"]
        for s in ss:
            v = vals.get((s, c))
            o = opened.get((s, c))
            row.append(fmt(v) + ("" if o in (None, c) else f" ({o:,} open)"))
        for p in PEERS:
            if p in ss and "herald" in ss:
                row.append(ratio(vals.get(("herald", c)), vals.get((p, c))))
        trs.append(row)
    d.table(hdr, trs)
    if idle:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        bars(ax, counts, ss, vals, "RSS per idle connection (bytes)")
        ax.set_xlabel("connections")
        ax.axhline(3000, color="red", lw=0.8, ls="--", label="target 3 KB")
        ax.legend(fontsize=8)
        ax.set_title("S1: server RSS per idle WebSocket connection")
        fig.tight_layout()
        fig.savefig(os.path.join(args.charts, "idle.png"), dpi=110)
        plt.close(fig)
        d.p(f"![idle RSS per connection]({rel}/idle.png)")
        d.p()
        top = max(counts)
        summary.append((f"idle RSS per connection at {top:,} (bytes)", {s: vals.get((s, top)) for s in ss}, "idle"))

    # ---- Setup
    setup = {r["server"]: r for r in by(rows, "setup")}

    # ---- S2 fan-out / S3 burst
    fan = {r["server"]: r for r in by(rows, "fanout")}
    bur = {r["server"]: r for r in by(rows, "burst")}
    room = next(iter(fan.values()), {}).get("room") or next(iter(bur.values()), {}).get("room")
    d.p("## S2: one emit to a room, S3: bursts")
    d.p()
    if room:
        f0 = next(iter(fan.values()), {})
        hc = next(iter(setup.values()), {}).get("http_connections", "?")
        b0 = next(iter(bur.values()), {})
        d.p(
            f"{room:,} receivers (one user each) are in one room: `all` on the peers; "
            "herald pushes `{\"to\": {\"all\": true}}`, its equivalent. "
            f"S2 sends {f0.get('emits', '?')} single emits (after {f0.get('warmup_emits', '?')} "
            "unmeasured ones), each after the previous one's last delivery; "
            f"S3 sends {b0.get('bursts', '?')} bursts of {b0.get('emits_per_burst', '?')} emits at once. "
            f"A peer gets a burst as one request with `times: {b0.get('emits_per_burst', '?')}`; herald, which has no "
            f"`times`, as {b0.get('emits_per_burst', '?')} requests at once over the publisher's {hc} keep-alive connections "
            "(so herald's figure includes one HTTP request per "
            f"{room:,} deliveries). Every server writes each delivery to its socket with at "
            "least one system call, so the kernel floor above bounds S2 from below; in a burst "
            "several frames can share one write. Data is `{\"k\", \"t\", \"p\"}` with "
            f"{next(iter(setup.values()), {}).get('pad_bytes', 100)} bytes of padding; each "
            "delivery is `42[\"bench\",data,{\"id\",\"ts\"}]`. Time to last delivery runs "
            "from the publisher's send to the last receiver's read."
        )
        d.p()
    hdr = ["server", "S2 µs CPU/delivery", "S2 above kernel floor (µs)", "S2 last delivery, median (ms)", "S2 delivery p99 (ms)",
           "S3 µs CPU/delivery", "S3 last delivery (ms)", "missing"]
    trs = []
    for s in servers_in(list(fan.values()) + list(bur.values())):
        f, b = fan.get(s, {}), bur.get(s, {})
        lat = (f.get("latency_us") or {}).get("p99")
        miss = (f.get("missing") or 0) + (b.get("missing") or 0)
        cpd = f.get("cpu_us_per_delivery")
        trs.append([
            NAMES.get(s, s), fmt(cpd), fmt(cpd - floor) if (cpd is not None and floor) else "—",
            fmt(f.get("time_to_last_ms_median")),
            fmt(lat / 1000 if lat else None), fmt(b.get("cpu_us_per_delivery"), 3),
            ", ".join(fmt(x) for x in b.get("time_to_last_ms", [])) or "—", fmt(miss, 0),
        ])
    d.table(hdr, trs)
    rr = []
    for p in PEERS:
        if "herald" in fan and p in fan:
            rr.append([f"herald ÷ {NAMES[p]}", ratio(fan["herald"].get("cpu_us_per_delivery"), fan[p].get("cpu_us_per_delivery")),
                       ratio(bur.get("herald", {}).get("cpu_us_per_delivery"), bur.get(p, {}).get("cpu_us_per_delivery")),
                       ratio(fan["herald"].get("time_to_last_ms_median"), fan[p].get("time_to_last_ms_median"))])
    if rr:
        d.table(["ratio", "S2 CPU/delivery", "S3 CPU/delivery", "S2 time to last delivery"], rr)
    if fan or bur:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        ss2 = servers_in(list(fan.values()) + list(bur.values()))
        for ax, data, title, tgt in ((axes[0], fan, "S2: one emit to 10k", 2.5), (axes[1], bur, "S3: bursts of 100 emits", 0.3)):
            v = {(s, 0): data.get(s, {}).get("cpu_us_per_delivery") for s in ss2}
            bars(ax, [0], ss2, v, "server CPU per delivery (µs)")
            ax.set_xticks([])
            ax.axhline(tgt, color="red", lw=0.8, ls="--", label=f"target {tgt} µs")
            ax.set_title(title)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.charts, "fanout.png"), dpi=110)
        plt.close(fig)
        d.p(f"![CPU per delivery]({rel}/fanout.png)")
        d.p()
        summary.append(("S2 one emit to the room: µs CPU per delivery", {s: fan.get(s, {}).get("cpu_us_per_delivery") for s in ss2}, "fanout"))
        summary.append(("S3 bursts of 100 emits: µs CPU per delivery", {s: bur.get(s, {}).get("cpu_us_per_delivery") for s in ss2}, "burst"))

    # ---- S4 unicast
    uni = by(rows, "unicast")
    hc = next(iter(setup.values()), {}).get("http_connections", "?")
    d.p("## S4: unicast pushes through the HTTP API")
    d.p()
    if uni:
        u0 = uni[0]
        d.p(
            f"Pushes to each of {u0.get('users', 0):,} users, {u0.get('rounds')} rounds, as fast as "
            f"the publisher's {hc} keep-alive HTTP/1.1 connections go (one request in flight "
            "each). With batch 1 every push is its own request; with batch 100 one request "
            "names 100 users (herald `to.users`, the peers one emit to 100 rooms). CPU per "
            "push = server CPU ÷ (users × rounds), HTTP included. herald runs twice: "
            "volatile (`\"volatile\": true`, live only, like the peers) and durable "
            "(`\"volatile\": false`: stored in its SQLite inbox, fsync on, before it is "
            "answered and routed; the receivers ack each stored message, as a client whose "
            "handler calls the ack callback does, and herald records it delivered); the peers "
            "store nothing."
        )
        d.p()
    batches = sorted({r["batch"] for r in uni})
    hdr = ["server", "users per request", "µs CPU/push", "µs CPU/request", "pushes/s", "delivery p50 / p99 (ms)", "missing"]
    trs = []
    uv = {}
    for r in sorted(uni, key=lambda r: (r["batch"], servers_in(uni).index(r["server"]))):
        lat = r.get("latency_us") or {}
        uv[(r["server"], r["batch"])] = r.get("cpu_us_per_push")
        trs.append([NAMES.get(r["server"], r["server"]), r["batch"], fmt(r.get("cpu_us_per_push")),
                    fmt(r.get("cpu_us_per_request")), fmt(r.get("pushes_per_s")),
                    f"{fmt((lat.get('p50') or 0) / 1000)} / {fmt((lat.get('p99') or 0) / 1000)}",
                    fmt(r.get("missing"), 0) + (f" ({r['misdirected']} misdirected)" if r.get("misdirected") else "")])
    d.table(hdr, trs)
    rr = []
    for hs in ("herald", "herald-durable"):
        for p in PEERS:
            for b in batches:
                if (hs, b) in uv and (p, b) in uv:
                    rr.append([f"{NAMES[hs]} ÷ {NAMES[p]}", b, ratio(uv[(hs, b)], uv[(p, b)])])
    if rr:
        d.table(["ratio", "users per request", "CPU/push"], rr)
    if uni:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        bars(ax, batches, servers_in(uni), uv, "server CPU per push (µs)", log=True)
        ax.set_xlabel("users per request")
        ax.legend(fontsize=8)
        ax.set_title("S4: unicast pushes through the HTTP API")
        fig.tight_layout()
        fig.savefig(os.path.join(args.charts, "unicast.png"), dpi=110)
        plt.close(fig)
        d.p(f"![CPU per push]({rel}/unicast.png)")
        d.p()
        summary.append(("S4 unicast, 1 user per request: µs CPU per push incl. HTTP", {s: uv.get((s, 1)) for s in servers_in(uni)}, "unicast"))

    # ---- S5 latency
    lat = by(rows, "latency")
    d.p("## S5: publish → device latency at fixed rates")
    d.p()
    if lat:
        l0 = lat[0]
        d.p(
            f"Unicast pushes to random users among {l0.get('users', 0):,} connected, one "
            f"request each, at a fixed rate for {l0.get('secs')} s per rate (open loop: "
            "each push has an intended send time on a fixed schedule and is queued for the "
            f"next free HTTP connection of {hc} when all are busy). The publisher stamps the "
            "intended send time (CLOCK_REALTIME, ns) into the data; the receiver subtracts "
            "it from its clock when it reads the frame, so time a push waited in the "
            "publisher's queue counts (no coordinated omission). After each window the "
            "publisher waits at most a few seconds for what is in flight; pushes never sent "
            "by then are counted as unsent; *undelivered* counts pushes the server answered 200 "
            "that had not reached their receiver by then (late or lost). Achieved = deliveries "
            "within the window ÷ its length."
        )
        d.p()
    rates = sorted({r["rate"] for r in lat})
    hdr = ["rate/s", "server", "achieved/s", "p50 (ms)", "p99 (ms)", "p99.9 (ms)", "max (ms)", "µs CPU/push", "undelivered / unsent"]
    trs = []
    lv = {}
    for r in sorted(lat, key=lambda r: (r["rate"], servers_in(lat).index(r["server"]))):
        q = r.get("latency_us") or {}
        lv[(r["server"], r["rate"])] = r
        trs.append([f"{r['rate']:,}", NAMES.get(r["server"], r["server"]), fmt(r.get("achieved_per_s")),
                    fmt((q.get("p50") or 0) / 1000), fmt((q.get("p99") or 0) / 1000),
                    fmt((q.get("p999") or 0) / 1000), fmt((q.get("max") or 0) / 1000),
                    fmt(r.get("cpu_us_per_push")), f"{r.get('missing', 0)} / {r.get('unsent', 0)}"])
    d.table(hdr, trs)
    rr = []
    for hs in ("herald", "herald-durable"):
        for p in PEERS:
            for rt in rates:
                if (hs, rt) in lv and (p, rt) in lv:
                    a, b = lv[(hs, rt)].get("latency_us") or {}, lv[(p, rt)].get("latency_us") or {}
                    rr.append([f"{NAMES[hs]} ÷ {NAMES[p]}", f"{rt:,}", ratio(a.get("p50"), b.get("p50")),
                               ratio(a.get("p99"), b.get("p99")), ratio(lv[(hs, rt)].get("cpu_us_per_push"), lv[(p, rt)].get("cpu_us_per_push"))])
    if rr:
        d.table(["ratio", "rate/s", "p50", "p99", "CPU/push"], rr)
    if lat:
        ss5 = servers_in(lat)
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for ax, key, title in zip(axes, ("p50", "p99", "p999"), ("p50", "p99", "p99.9")):
            v = {(s, rt): ((lv.get((s, rt), {}).get("latency_us") or {}).get(key) or 0) / 1000 for s in ss5 for rt in rates}
            bars(ax, rates, ss5, v, "publish → device (ms)", log=True)
            ax.set_xlabel("pushes per second")
            ax.set_title(title)
        axes[1].axhline(2, color="red", lw=0.8, ls="--", label="target p99 2 ms")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.charts, "latency.png"), dpi=110)
        plt.close(fig)
        d.p(f"![latency]({rel}/latency.png)")
        d.p()
        if 10000 in rates:
            summary.append(("S5 p99 publish → device at 10k pushes/s (ms)", {s: ms((lv.get((s, 10000), {}).get("latency_us") or {}).get("p99")) for s in ss5}, "latency"))

    # ---- S6 churn
    ch = {r["server"]: r for r in by(rows, "churn")}
    d.p("## S6: connection churn")
    d.p()
    if ch:
        c0 = next(iter(ch.values()))
        d.p(
            f"{c0.get('concurrency')} loops each connect, upgrade, read the open packet, join `/` "
            "as a user (10,000 user ids in rotation), then leave as socket.io-client's "
            "`disconnect()` does (`41`, a close frame, wait for the server to close), and "
            f"start again; measured after {c0.get('warmup_secs')} s of warm-up. CPU per "
            "connection covers the whole life: accept, upgrade, handshake, join, leave, "
            "close. RSS drift = RSS at the end − RSS after warm-up."
        )
        d.p()
    hdr = ["server", "seconds", "connections", "per s", "µs CPU/connection", "handshake p50 / p99 (ms)", "RSS after warm-up → end (KiB)", "drift (KiB)", "failed"]
    trs = []
    for s in servers_in(list(ch.values())):
        r = ch[s]
        h = r.get("handshake_us") or {}
        trs.append([NAMES.get(s, s), r.get("secs"), f"{r.get('cycles', 0):,}", fmt(r.get("cycles_per_s")),
                    fmt(r.get("cpu_us_per_connection")), f"{fmt((h.get('p50') or 0) / 1000)} / {fmt((h.get('p99') or 0) / 1000)}",
                    f"{r.get('rss_warm_kib'):,} → {r.get('rss_end_kib'):,}", f"{r.get('rss_drift_kib'):+,}", r.get("failed")])
    d.table(hdr, trs)
    rr = []
    for p in PEERS:
        if "herald" in ch and p in ch:
            rr.append([f"herald ÷ {NAMES[p]}", ratio(ch["herald"].get("cpu_us_per_connection"), ch[p].get("cpu_us_per_connection"))])
    accepts = [r["cpu_us_per_connection"] for r in by(rows, "accept_floor")]
    if accepts and "herald" in ch:
        af = sum(accepts) / len(accepts)
        rr.append(["herald ÷ a bare TCP accept, read and close (the floor, "
                   f"{fmt(af)} µs, `herald-bench accept-floor`)",
                   ratio(ch["herald"].get("cpu_us_per_connection"), af)])
    if rr:
        d.table(["ratio", "CPU/connection"], rr)
    if len({r.get("secs") for r in ch.values()}) > 1:
        d.p("The servers churned for different lengths of time (see *seconds*): the run's "
            "time budget gives herald the long run; drift figures of shorter runs say less.")
        d.p()
    if ch:
        ss6 = servers_in(list(ch.values()))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        bars(axes[0], [0], ss6, {(s, 0): ch[s].get("cpu_us_per_connection") for s in ss6}, "server CPU per connection (µs)")
        axes[0].set_xticks([])
        axes[0].axhline(20, color="red", lw=0.8, ls="--", label="target 20 µs")
        axes[0].legend(fontsize=8)
        axes[0].set_title("S6: connect + handshake + leave")
        for s in ss6:
            sm = ch[s].get("samples") or []
            axes[1].plot([x["t"] for x in sm], [x["rss_kib"] / 1024 for x in sm], label=NAMES.get(s, s), color=COLORS.get(s))
        axes[1].set_xlabel("seconds")
        axes[1].set_ylabel("server RSS (MiB)")
        axes[1].set_title("RSS during churn")
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.charts, "churn.png"), dpi=110)
        plt.close(fig)
        d.p(f"![churn]({rel}/churn.png)")
        d.p()
        summary.append(("S6 churn: µs CPU per connection", {s: ch[s].get("cpu_us_per_connection") for s in ss6}, "churn"))

    # ---- Durable unicast summary line
    dur = {r["server"]: r for r in uni if r["batch"] == 1}
    if "herald-durable" in dur:
        summary.append(("S4 durable unicast: µs CPU per push incl. HTTP", {"herald-durable": dur["herald-durable"].get("cpu_us_per_push")}, "unicast-durable"))
    dl = {r["server"]: r for r in lat if r["rate"] == 10000}
    if "herald-durable" in dl:
        summary.append(("S5 durable p99 at 10k pushes/s (ms)", {"herald-durable": ms((dl["herald-durable"].get("latency_us") or {}).get("p99"))}, "latency"))

    # ---- Errors
    errs = by(rows, "error")
    incomplete = [r for r in rows if r.get("missing")]

    # ---- Summary at the top
    head = Doc()
    head.p("## Summary")
    head.p()
    cols = ["herald", "herald-durable", "socketioxide", "socketio"]
    cols = [c for c in cols if any(c in v for _, v, _ in summary)]
    hdr = ["figure"] + [NAMES[c] for c in cols]
    hdr += [f"herald ÷ {NAMES[p]}" for p in PEERS if p in cols]
    hdr += ["target", "herald"]
    trs = []
    for name, vals, key in summary:
        row = [name] + [fmt(vals.get(c)) for c in cols]
        hs = "herald-durable" if key in ("unicast-durable",) or (key == "latency" and "durable" in name) else "herald"
        for p in PEERS:
            if p in cols:
                row.append(ratio(vals.get(hs), vals.get(p)))
        tgt, ok = TARGETS[key]
        hv = vals.get(hs)
        if key == "latency" and "durable" not in name:
            tgt = "(target is for durable pushes)"
            verdict = "—"
        else:
            verdict = "—" if hv is None else ("meets" if ok(hv) else "**misses**")
            if hv is not None and not ok(hv):
                misses.append(f"{name}: herald {fmt(hv)} against {tgt}")
        row += [tgt, verdict]
        trs.append(row)
    head.table(hdr, trs)
    if misses:
        head.p("herald misses these targets of DESIGN.md §7 in this run:")
        head.p()
        for m in misses:
            head.p(f"- {m}")
        head.p()
        head.p("What bounds them is in [Where herald's time goes](#where-heralds-time-goes).")
        head.p()
    if errs or incomplete:
        head.p("Incomplete or failed runs:")
        head.p()
        for r in errs:
            head.p(f"- {NAMES.get(r['server'], r['server'])}: `herald-bench {r.get('command')}` failed (see the run's output)")
        for r in incomplete:
            extra = f" at {r['rate']:,}/s" if "rate" in r else (f", batch {r['batch']}" if "batch" in r else "")
            if r["scenario"] == "latency":
                head.p(f"- {NAMES.get(r['server'], r['server'])} latency{extra}: {r['missing']:,} of {r.get('http_ok', 0):,} accepted pushes not delivered by the end of the window's drain (late or lost)")
            else:
                head.p(f"- {NAMES.get(r['server'], r['server'])} {r['scenario']}{extra}: {r['missing']:,} of {r.get('expected', 0):,} deliveries missing")
        head.p()

    # Insert the summary after the conditions.
    i = d.lines.index("## S1: idle connections")
    d.lines[i:i] = head.lines

    # ---- How the servers are driven, and notes
    d.p("## How each server is driven")
    d.p()
    d.p(
        "- **socket.io** (`bench/peers/socketio/server.js`) and **socketioxide** "
        "(`bench/peers/socketioxide/`): clients connect with `auth: {userId}` and join rooms "
        "`user:<userId>` and `all`. `POST /push` `{\"users\": [...] | null, \"event\", \"data\", "
        "\"times\"}` emits `event(data, {id, ts})` `times` times to the users' rooms (or `all`). "
        "Both answer `{\"id\", \"ts\", \"emits\"}`. socketioxide's per-socket queue is set to "
        "4096 packets, herald's default, so a burst is not dropped by a smaller queue; "
        "socket.io's is unbounded. Everything else is at its defaults (ping interval 25 s)."
    )
    d.p(
        "- **herald** runs the release binary with `--dev-auth` (clients send `{userId}`; the "
        "API needs no key) and a fresh `--data-dir`. It is driven through its real API, "
        "`POST /api/v1/push`: `{\"to\": {\"all\": true}}` for the room, `{\"to\": {\"users\": "
        "[...]}}` for users, one message per request (no `times`)."
    )
    d.p(
        "- A fresh server process for each of S1, S2–S5 (one process, one set of receivers), "
        "herald's durable S4–S5, and S6."
    )
    d.p()
    if os.path.exists(notes_path):
        d.p(open(notes_path).read().rstrip())
        d.p()
    d.p("## Reproducing")
    d.p()
    d.p("```sh")
    d.p("bench/run.sh            # everything, writes this file and docs/benchmarks/")
    d.p("bench/run.sh --quick    # smoke check, writes bench/out/quick/")
    d.p("bench/run.sh --servers herald --churn-secs 60   # one server, shorter churn")
    d.p("```")
    d.p()
    d.p(f"Parameters of this run: {meta.get('connections'):,} receivers; idle steps {meta.get('idle_steps')}; "
        f"`{meta.get('suite_args')}`; churn {meta.get('churn_secs')} s for herald, "
        f"{meta.get('peer_churn_secs')} s for the peers. Raw results: `{rel}/results.jsonl`.")
    d.p()

    with open(args.out, "w") as f:
        f.write("\n".join(d.lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
