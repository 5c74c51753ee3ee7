"""`perpdex bench`: the benchmark suite. Every table is against the plain Python book
(bench/plain_book.py), run in the same process on the same operations; docs/performance.md says
how the numbers were made and what they are.

    perpdex bench [--suite core|replay|gateway|liquidation|replication|all] [--quick]
                  [--json FILE | --report FILE]
                  [--compare OLD.json] [--threshold 0.15] [--plot DIR] [--rounds N] [--seed S]

The replication suite is bench/replication.py's (its docstring gives its method): the gateway
with the replicated log on three local nats-server processes against the single machine, and
the failover time.

Method.
- Workloads (bench/workloads.py): seeded and deterministic; their sha256 is in the report.
- Throughput: each path runs the whole workload from the same starting book (built untimed), in
  `rounds` rounds that take the paths in turn (so that a slow spell on a shared machine hits all
  of them), with the garbage collector off. Reported: the median over rounds of operations per
  second, and `x plain`, the median over rounds of (path / plain book of the same round).
- Fills: after the first round, each path's fills (price, qty, maker id, taker id, in order) are
  compared with the plain book's: `fills` says `same`, `differ`, or `not reported`.
- Latency: a second pass on fresh instances times every operation with time.perf_counter_ns
  (its own cost, about 50-80 ns, included) into HDR histograms (3 significant digits), one per
  operation kind. The batch and replay paths are timed one command per call (one request).
- The machine: CPU model, cores, load average before and after, and the versions.
No result is asserted: the machines are noisy; ratios are what the report is for.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path

from . import paths as P
from . import workloads as W

SUITES = ("core", "replay", "gateway", "liquidation", "replication")
PERCENTILES = (50, 90, 99, 99.9)
CURVE = (0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)
SIZES = {   # workload -> (full, quick) keyword arguments
    "deep": ({"n": 200_000, "depth": 20_000}, {"n": 3_000, "depth": 1_000}),
    "thin": ({"n": 100_000}, {"n": 2_000}),
    "mm": ({"n": 200_000, "depth": 2_000}, {"n": 3_000, "depth": 500}),
}


# ---- the machine -----------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except ImportError:
        return "not installed"


def _git() -> str:
    """The checkout's commit this code runs from (an installed wheel has none)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        if not head:
            return "unknown (not run from a checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":/engine", ":/gateway", ":/bench", ":!:/bench/results",
                                ":/setup.py"],
                               cwd=here, text=True, capture_output=True, timeout=10).stdout
        return head + (" (with uncommitted changes to the code)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    import zmq

    from perpdex.engine import core as engine_core
    from importlib.metadata import PackageNotFoundError, version
    try:
        perpdex = version("perpdex")
    except PackageNotFoundError:
        perpdex = "not installed"
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem, 1),
        "platform": platform.platform(), "load_before": list(os.getloadavg()),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "cython": _version("Cython"), "msgspec": _version("msgspec"),
        "sortedcontainers": _version("sortedcontainers"), "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "perpdex": perpdex, "commit": _git(),
        # STYLE 10: never measure the slow path without knowing it
        "engine_core": Path(engine_core.__file__).name,
        "engine_debug_build": os.environ.get("PERPDEX_DEBUG", "") not in ("", "0"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ---- measuring -------------------------------------------------------------------------------

def _hist():
    from hdrh.histogram import HdrHistogram
    return HdrHistogram(1, 60_000_000_000, 3)


def _timed(fn) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def latency(step, items, kinds) -> dict:
    """Time every call; {kind: summary} with an 'all' entry."""
    pc = time.perf_counter_ns
    lat = array("q", bytes(8 * len(items)))
    gc.collect()
    gc.disable()
    try:
        for i, x in enumerate(items):
            t0 = pc()
            step(x)
            lat[i] = pc() - t0
    finally:
        gc.enable()
    hists = {"all": _hist()}
    for v, k in zip(lat, kinds):
        h = hists.get(k)
        if h is None:
            h = hists[k] = _hist()
        v = max(v, 1)
        h.record_value(v)
        hists["all"].record_value(v)
    return {k: summarize(h) for k, h in hists.items()}


def summarize(h) -> dict:
    out = {"count": h.get_total_count()}
    for p in PERCENTILES:
        out[f"p{p:g}_ns"] = h.get_value_at_percentile(p)
    out["max_ns"] = h.get_max_value()
    out["curve_ns"] = [[p, h.get_value_at_percentile(p) if p < 100 else h.get_max_value()]
                       for p in CURVE]
    return out


def measure(wl, paths, rounds: int, log, lat: bool = True) -> dict:
    """Run `paths` on `wl`; the first path is the baseline."""
    n = len(wl.ops)
    runs = {p.name: [] for p in paths}
    fills = {}
    for r in range(rounds):
        for p in paths:
            prep = p.build(wl)
            runs[p.name].append(n / _timed(prep.run))
            if r == 0:
                fills[p.name] = prep.fills()
            del prep
    base_name = paths[0].name
    base_fills = fills[base_name]
    out = {}
    kinds = wl.kinds()
    for p in paths:
        ops = runs[p.name]
        f = fills[p.name]
        res = {
            "label": p.label,
            "ops_per_s": statistics.median(ops), "ops_per_s_rounds": ops,
            "x_plain": statistics.median(a / b for a, b in zip(ops, runs[base_name])),
            "fills": ("not reported" if f is None else "same" if f == base_fills else "differ"),
            "n_fills": None if f is None else len(f),
            "notes": {k: v for k, v in p.notes.items() if k == "fills" or k in kinds},
        }
        if lat and p.single is not None:
            step, items = p.single(wl)
            res["latency"] = latency(step, items, p.kinds(wl) if p.kinds else kinds)
            del step, items
        out[p.name] = res
        log(f"  {wl.name:5} {p.name:36} {res['ops_per_s']:>12,.0f} ops/s  "
            f"{res['x_plain']:5.2f}x plain  fills {res['fills']}")
    return out


# ---- the suites ------------------------------------------------------------------------------

def _workload(name, quick, seed):
    kw = SIZES[name][1 if quick else 0]
    return W.GENERATORS[name](seed=seed, **kw)


def core_suite(quick=False, rounds=3, seed=1, peers=True, log=print) -> dict:
    extra, skipped = [], {}
    if peers:
        from . import peers as peer_mod
        for name, p in peer_mod.available().items():
            if isinstance(p, str):
                skipped[name] = p
            else:
                extra.append(p)
    out = {"workloads": {}, "peers_skipped": skipped}
    for name in ("deep", "thin", "mm"):
        t0 = time.perf_counter()
        wl = _workload(name, quick, seed)
        desc = wl.describe()
        log(f"workload {name}: {desc['resting']:,} resting orders built, {len(wl.ops):,} "
            f"operations {desc['mix']} (generated in {time.perf_counter() - t0:.1f} s)")
        out["workloads"][name] = {"workload": desc,
                                  "paths": measure(wl, P.CORE + extra, rounds, log)}
        del wl
    out["scale"] = scale_part(quick, seed, out["workloads"]["deep"], log)
    return out


def scale_part(quick, seed, deep, log) -> dict:
    """bench/scale.py: bytes per resting order, and the deep mix over a much deeper book (one
    round, no latency pass), as a ratio to its speed over the standard book in this run."""
    from . import scale
    n = 20_000 if quick else 1_000_000
    mem = scale.memory(n)
    log(f"  scale: {n:,} resting orders: perpdex {mem['perpdex_int_cids']:.0f} bytes each "
        f"(integer cids), {mem['perpdex_string_cids']:.0f} (string cids); plain book "
        f"{mem['plain_book']:.0f}")
    wl = W.deep(seed=seed, n=SIZES["deep"][1 if quick else 0]["n"], depth=n)
    res = measure(wl, [P.PLAIN, P.HANDLES, P.RECORDS, P.EXECUTE, P.BATCH], 1, log, lat=False)
    speed = {name: {"ops_per_s": r["ops_per_s"], "x_plain": r["x_plain"],
                    "fills": r["fills"],
                    "x_standard_book": r["ops_per_s"] / deep["paths"][name]["ops_per_s"]}
             for name, r in res.items()}
    return {"memory": mem, "depth": n, "standard_depth": deep["workload"]["resting"],
            "speed": speed}


def replay_suite(quick=False, rounds=3, seed=1, log=print) -> dict:
    wl = _workload("deep", quick, seed)
    desc = wl.describe()
    res = measure(wl, P.REPLAY, rounds, log)
    ratio = res["replay msgpack"]["ops_per_s"] / res["replay jsonl"]["ops_per_s"]
    return {"workloads": {"deep": {"workload": desc, "paths": res}},
            "msgpack_over_jsonl": ratio}


def liquidation_suite(quick=False, log=print) -> dict:
    from . import liquidation
    sizes = (1_000,) if quick else (10_000, 100_000)
    out = {"method": "bench/liquidation.py: quiet mark updates (+-1 tick, nobody liquidated) and "
                     "one update 6 % down liquidating ten 9.5x accounts, each one `oracle` "
                     "through execute_batch; the plain book has no marks or margin: no baseline",
           "runs": []}
    for n in sizes:
        r = liquidation.run(n, 20 if quick else 200)
        out["runs"].append(r)
        log(f"  liquidation {n:>9,} accounts: quiet p50 {r['quiet_p50_us']:.1f} us, "
            f"p99 {r['quiet_p99_us']:.1f} us; ten liquidated in {r['ten_us']:,.0f} us")
    from . import liquidation_worst as worst
    out["worst"] = {"adl": worst.adl(3_000 if quick else 30_000, 100),
                    "waiting": worst.waiting(6_000 if quick else 60_000, 60 if quick else 600)}
    a, w = out["worst"]["adl"], out["worst"]["waiting"]
    log(f"  liquidation worst: {a['bankrupt']} bankrupt vs {a['positions']:,} positions in "
        f"{a['oracle_ms']:.1f} ms; {w['waiting']:,} waiting: ticks p99 {w['tick_p99_ms']:.2f} "
        f"ms, max {w['tick_max_ms']:.2f} ms")
    return out


def gateway_suite(quick=False, log=print) -> dict:
    from . import gateway
    return gateway.run(seconds=0.5 if quick else 3.0, rate=2_000 if quick else 10_000,
                       clients=1 if quick else 3, log=lambda *a: log("  gateway", *a))


def replication_suite(quick=False, log=print) -> dict:
    from . import replication
    return replication.run(seconds=1.0 if quick else 3.0, rate=200.0, repeat=1 if quick else 3,
                           failovers_=1 if quick else 3,
                           log=lambda *a: log("  replication", *a))


def run(suites=("core",), quick=False, rounds=None, seed=1, peers=True, log=print) -> dict:
    rounds = rounds or 3
    rep = {"meta": machine(), "method": __doc__.split("Method.")[1].strip(),
           "options": {"suites": list(suites), "quick": quick, "rounds": rounds, "seed": seed},
           "suites": {}}
    t0 = time.perf_counter()
    for s in suites:
        log(f"suite {s}")
        if s == "core":
            rep["suites"]["core"] = core_suite(quick, rounds, seed, peers, log)
        elif s == "replay":
            rep["suites"]["replay"] = replay_suite(quick, rounds, seed, log)
        elif s == "liquidation":
            rep["suites"]["liquidation"] = liquidation_suite(quick, log)
        elif s == "gateway":
            rep["suites"]["gateway"] = gateway_suite(quick, log)
        elif s == "replication":
            rep["suites"]["replication"] = replication_suite(quick, log)
    rep["meta"]["load_after"] = list(os.getloadavg())
    rep["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    rep["goals"] = goals(rep)
    return rep


# ---- the goals (docs/performance.md), next to what was measured ------------------------------

def goals(rep) -> list:
    out = []
    core = rep["suites"].get("core", {}).get("workloads", {}).get("deep", {}).get("paths")
    if core:
        # The per-command API at its fastest is the handle calls (Engine.place / cancel_order /
        # amend_order, docs/engine-api.md); new_order / cancel by names is reported beside it.
        ex = core.get("perpdex place/cancel_order") or core["perpdex execute"]
        named = core.get("perpdex new_order/cancel") or core["perpdex execute"]
        bt, pl = core["perpdex execute_batch"], core["plain book"]
        out.append(["per-command API (the handle calls, one call per op, fills returned) vs "
                    "plain book, deep", ">= 4x", f"{ex['x_plain']:.2f}x (new_order by names: "
                    f"{named['x_plain']:.2f}x)", ex["x_plain"] >= 4])
        out.append(["execute_batch, msgpack in and out, vs plain book, deep", ">= 3.5x",
                    f"{bt['x_plain']:.2f}x", bt["x_plain"] >= 3.5])
        rc = core.get("perpdex execute_records")
        if rc:
            out.append(["binary batch path (execute_records: records in, fill records out) vs "
                        "plain book, deep", ">= 8x", f"{rc['x_plain']:.2f}x", rc["x_plain"] >= 8])
        if "latency" in ex and "latency" in pl:
            for q in ("p99", "p99.9"):
                a, b = ex["latency"]["all"][f"{q}_ns"], pl["latency"]["all"][f"{q}_ns"]
                out.append([f"per-command {q} vs plain book's, deep", "<= 1/3",
                            f"{a / 1000:.2f} us vs {b / 1000:.2f} us ({a / b:.2f})", a / b <= 1 / 3])
    rp = rep["suites"].get("replay")
    if rp:
        r = rp["msgpack_over_jsonl"]
        out.append(["JSON Lines replay within 2x of msgpack replay", "msgpack / jsonl <= 2",
                    f"{r:.2f}", r <= 2])
    mk = (core or {}).get("perpdex execute, with marks", {}).get("latency", {})
    if "oracle" in mk and "passive" in mk:
        a, b = mk["oracle"]["p99_ns"], mk["passive"]["p99_ns"]
        out.append(["oracle p99 within 5x of a passive order's p99 (200 accounts, deep, "
                    "execute)", "<= 5x", f"{a / 1000:.1f} us vs {b / 1000:.2f} us ({a / b:.1f}x)",
                    a / b <= 5])
    sc = rep["suites"].get("core", {}).get("scale")
    if sc:
        n = f"{sc['depth']:,}"
        b = sc["memory"]["perpdex_int_cids"]
        out.append([f"{n} resting orders: bytes each, integer cids", "< 100", f"{b:.0f} "
                    f"(string cids {sc['memory']['perpdex_string_cids']:.0f}; plain book "
                    f"{sc['memory']['plain_book']:.0f})", b < 100])
        for path in ("perpdex place/cancel_order", "perpdex execute_records",
                     "perpdex execute_batch", "perpdex execute"):
            if path not in sc["speed"]:
                continue
            x = sc["speed"][path]["x_standard_book"]
            out.append([f"deep mix over {n} resting vs over {sc['standard_depth']:,}, {path}",
                        ">= 0.8x", f"{x:.2f}x", x >= 0.8])
    return out


# ---- the report ------------------------------------------------------------------------------

def _us(ns):
    return f"{ns / 1000:.2f}"


def summary(rep, out=sys.stdout):
    """The headline table: every core path's ratio to the plain book on each workload."""
    core = rep["suites"].get("core", {}).get("workloads")
    if not core:
        return
    names = list(core)
    w = out.write
    w("\n### summary: operations per second as a ratio to the plain book, same run\n\n| path | "
      + " | ".join(f"{n} x plain" for n in names) + f" | {names[0]} ops/s | {names[0]} p50 / "
      "p99 / p99.9 us | fills |\n|---|" + "---:|" * (len(names) + 1) + "---|---|\n")
    first = core[names[0]]["paths"]
    for path, r in first.items():
        cells = [f"{core[n]['paths'][path]['x_plain']:.2f}" if path in core[n]["paths"] else ""
                 for n in names]
        lat = r.get("latency", {}).get("all")
        fills = sorted({core[n]["paths"][path]["fills"] for n in names
                        if path in core[n]["paths"]})
        w(f"| {path} | " + " | ".join(cells) + f" | {r['ops_per_s']:,.0f} | "
          + (f"{_us(lat['p50_ns'])} / {_us(lat['p99_ns'])} / {_us(lat['p99.9_ns'])}" if lat
             else "") + " | " + ", ".join(
              f"{f} ({', '.join(n for n in names if core[n]['paths'][path]['fills'] == f)})"
              if len(fills) > 1 else f for f in fills) + " |\n")


def print_report(rep, out=sys.stdout):
    w = out.write
    m = rep["meta"]
    w(f"\nperpdex bench, {m['date']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
      f"load {m['load_before'][0]:.2f} before, {m.get('load_after', [0])[0]:.2f} after\n"
      f"Python {m['python']}, Cython {m['cython']}, msgspec {m['msgspec']}, sortedcontainers "
      f"{m['sortedcontainers']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}; perpdex "
      f"{m['perpdex']} at {m['commit']}; core {m['engine_core']}"
      + (" (DEBUG BUILD)" if m["engine_debug_build"] else "") + "\n")
    o = rep["options"]
    w(f"options: {o}\n")
    if o["quick"]:
        w("QUICK RUN: small workloads, for checking that the suite works; its ratios are not "
          "measurements (run without --quick for those)\n")
    summary(rep, out)
    for sname in ("core", "replay"):
        s = rep["suites"].get(sname)
        if not s:
            continue
        for wname, wres in s["workloads"].items():
            d = wres["workload"]
            w(f"\n### {sname}: {wname} ({d['resting']:,} resting first, {d['ops']:,} operations: "
              + ", ".join(f"{k} {v:,}" for k, v in d["mix"].items()) + f"; seed {d['seed']}, "
              f"sha256 {d['sha256'][:12]})\n\n")
            w("| path | ops/s | x plain | fills | p50 us | p90 us | p99 us | p99.9 us | max us |\n"
              "|---|---:|---:|---|---:|---:|---:|---:|---:|\n")
            for name, r in wres["paths"].items():
                lat = r.get("latency", {}).get("all")
                cells = ([_us(lat[k]) for k in ("p50_ns", "p90_ns", "p99_ns", "p99.9_ns",
                                                  "max_ns")] if lat else [""] * 5)
                w(f"| {name} | {r['ops_per_s']:,.0f} | {r['x_plain']:.2f} | {r['fills']} | "
                  + " | ".join(cells) + " |\n")
            kinds = list(d["mix"]) + (["oracle"] if any("oracle" in r.get("latency", {})
                                                        for r in wres["paths"].values()) else [])
            lat_paths = [(n, r) for n, r in wres["paths"].items() if "latency" in r]
            w("\nlatency by kind, us p50 / p99 / p99.9:\n\n| path | " + " | ".join(kinds)
              + " |\n|---|" + "---|" * len(kinds) + "\n")
            for n, r in lat_paths:
                cells = []
                for k in kinds:
                    x = r["latency"].get(k)
                    cells.append(f"{_us(x['p50_ns'])} / {_us(x['p99_ns'])} / "
                                 f"{_us(x['p99.9_ns'])}" if x else "")
                w(f"| {n} | " + " | ".join(cells) + " |\n")
            notes = [(n, k, v) for n, r in wres["paths"].items() for k, v in r["notes"].items()]
            if notes:
                w("\n" + "".join(f"- {n}, {k}: {v}\n" for n, k, v in notes))
        if sname == "core":
            w("\npaths:\n" + "".join(f"- {n}: {r['label']}\n" for n, r in
                                     next(iter(s["workloads"].values()))["paths"].items()))
            for name, why in s.get("peers_skipped", {}).items():
                w(f"- peer {name}: skipped, {why}\n")
        if sname == "replay":
            w(f"\nmsgpack replay / JSON Lines replay: {s['msgpack_over_jsonl']:.2f}x\n")
    sc = rep["suites"].get("core", {}).get("scale")
    if sc:
        m = sc["memory"]
        w(f"\n### scale: {sc['depth']:,} resting orders\n\nmemory per resting order "
          f"(growth of a child process's resident set): perpdex {m['perpdex_int_cids']:.0f} "
          f"bytes with integer cids, {m['perpdex_string_cids']:.0f} with string cids; the plain "
          f"book {m['plain_book']:.0f}\n\n| path | ops/s | x plain | fills | x its speed over "
          f"{sc['standard_depth']:,} |\n|---|---:|---:|---|---:|\n")
        for name, r in sc["speed"].items():
            w(f"| {name} | {r['ops_per_s']:,.0f} | {r['x_plain']:.2f} | {r['fills']} | "
              f"{r['x_standard_book']:.2f} |\n")
    lq = rep["suites"].get("liquidation")
    if lq:
        w("\n### liquidation\n\n| accounts with positions | quiet mark update p50 / p99 (us) | "
          "mark update liquidating ten (us) |\n|---:|---:|---:|\n")
        for r in lq["runs"]:
            w(f"| {r['accounts']:,} | {r['quiet_p50_us']:.1f} / {r['quiet_p99_us']:.1f} | "
              f"{r['ten_us']:,.0f} ({r['events_of_ten']} events) |\n")
        w(f"\n{lq['method']}\n")
    gw = rep["suites"].get("gateway")
    if gw:
        from . import gateway
        w("\n### gateway\n\n")
        gateway.print_report(gw, out)
    rp = rep["suites"].get("replication")
    if rp:
        from . import replication
        w("\n### replication\n\n")
        replication.print_report(rp, out)
    w("\n### the goals (docs/performance.md)\n\n| goal | target | measured | met |\n"
      "|---|---|---|---|\n")
    for g, target, got, met in rep["goals"]:
        w(f"| {g} | {target} | {got} | {'-' if met is None else 'yes' if met else 'no'} |\n")


# ---- compare ---------------------------------------------------------------------------------

class ReportError(ValueError):
    """A report that cannot be read, or two runs that cannot be compared; the message says why."""


def load_report(path) -> dict:
    """A report written by `--json`, checked enough to compare: ReportError if it is missing or
    is not one."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot be read: {getattr(e, 'strerror', None) or e}") from None
    try:
        rep = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e}); a report is what `perpdex bench --json` "
                          f"writes") from None
    if not (isinstance(rep, dict) and isinstance(rep.get("options"), dict)
            and isinstance(rep.get("suites"), dict) and isinstance(rep.get("meta"), dict)):
        raise ReportError(f"{path}: not a report of `perpdex bench --json` (it has no meta, "
                          f"options and suites)")
    try:                # read as it will be: printed, and its metrics taken
        print_report(rep, io.StringIO())
        _metrics(rep)
        unlike(rep["options"], rep, path)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise ReportError(f"{path}: not a report of `perpdex bench --json` ({type(e).__name__}: "
                          f"{e})") from None
    return rep


def unlike(options: dict, old: dict, name: str) -> str | None:
    """Why a run with `options` cannot be compared with the report `old` (named `name`): a quick
    run against a full one, a suite `old` does not have, another seed. None if it can."""
    o = old["options"]
    if bool(o.get("quick")) != bool(options["quick"]):
        kind = {True: "a --quick run (small workloads)", False: "a full run"}
        return (f"{name} is {kind[bool(o.get('quick'))]} and this is "
                f"{kind[bool(options['quick'])]}: their workloads differ, so their numbers do "
                f"not compare; compare like with like")
    missing = [s for s in options["suites"] if s not in o.get("suites", [])]
    if missing:
        return (f"{name} has no {', '.join(missing)} suite (it ran "
                f"{', '.join(o.get('suites', [])) or 'none'}): nothing to compare with")
    if o.get("seed") != options["seed"]:
        return (f"{name} ran seed {o.get('seed')} and this run seed {options['seed']}: their "
                f"workloads differ")
    return None


def unlike_workloads(new: dict, old: dict, name: str) -> str | None:
    """Why two reports' workloads differ (their sha256: the same options, a changed generator);
    None if every workload both have is the same."""
    for sname, s in new["suites"].items():
        for wname, w in (s.get("workloads") or {}).items():
            theirs = old["suites"].get(sname, {}).get("workloads", {}).get(wname)
            if theirs and theirs["workload"]["sha256"] != w["workload"]["sha256"]:
                return (f"the {sname}/{wname} workload is not {name}'s (sha256 "
                        f"{w['workload']['sha256'][:12]} against {theirs['workload']['sha256'][:12]}"
                        f"): its generator changed, so the numbers do not compare")
    return None


# What a compared metric is counted in, and whether more of it is better.
UNITS = {"ops/s": ("ops/s", True), "x plain": ("x plain book", True),
         "p50": ("us", False), "p99": ("us", False), "p99.9": ("us", False),
         "quiet p50": ("us", False), "ten": ("us", False)}


def _metrics(rep) -> dict:
    """A flat {name: (value, unit, higher is better)} of what a comparison looks at."""
    out = {}

    def put(key, what, value):
        unit, higher = UNITS[what]
        out[f"{key} {what}"] = (value, unit, higher)

    for sname in ("core", "replay"):
        for wname, wres in rep.get("suites", {}).get(sname, {}).get("workloads", {}).items():
            for pname, r in wres["paths"].items():
                key = f"{sname}/{wname}/{pname}"
                put(key, "ops/s", r["ops_per_s"])
                put(key, "x plain", r["x_plain"])
                lat = r.get("latency", {}).get("all")
                if lat:
                    for q in ("p50", "p99", "p99.9"):
                        put(key, q, lat[f"{q}_ns"] / 1000)
    for r in rep.get("suites", {}).get("liquidation", {}).get("runs", []):
        key = f"liquidation/{r['accounts']}"
        put(key, "quiet p50", r["quiet_p50_us"])
        put(key, "ten", r["ten_us"])
    return out


def compare(new, old, threshold=0.15, out=sys.stdout) -> list:
    """Print new / old for every metric both have, with its unit and which way is better;
    return the regressions: worse by more than `threshold` (a fraction)."""
    a, b = _metrics(new), _metrics(old)
    regressions = []
    out.write(f"\ncompared with {old.get('meta', {}).get('date', '?')} "
              f"({old.get('meta', {}).get('commit', '?')}); a regression is worse by more than "
              f"{threshold:.0%}\n\n| metric | unit | better | old | new | new / old | |\n"
              f"|---|---|---|---:|---:|---:|---|\n")
    for k, (v, unit, higher) in a.items():
        if k not in b or not b[k][0]:
            continue
        ov = b[k][0]
        ratio = v / ov
        bad = ratio < 1 - threshold if higher else ratio > 1 + threshold
        if bad:
            regressions.append(k)
        out.write(f"| {k} | {unit} | {'higher' if higher else 'lower'} | {ov:,.2f} | {v:,.2f} | "
                  f"{ratio:.2f} | {'REGRESSION' if bad else ''} |\n")
    out.write(f"\n{len(regressions)} regression(s) past {threshold:.0%}\n")
    return regressions


# ---- plots -----------------------------------------------------------------------------------

NO_MATPLOTLIB = ("--plot needs matplotlib: pip install 'perpdex[bench]' (`make install` in a "
                 "checkout has it)")


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display), or None if it is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(rep, folder) -> list:
    """PNG plots: latency percentile curves and throughput bars per workload. Returns the files
    written. ReportError if matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        raise ReportError(NO_MATPLOTLIB)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sname in ("core", "replay"):
        for wname, wres in rep["suites"].get(sname, {}).get("workloads", {}).items():
            paths = wres["paths"]
            fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
            names = list(paths)
            vals = [paths[n]["ops_per_s"] / 1000 for n in names]
            bars = ax.barh(names[::-1], vals[::-1], color=["#777" if paths[n].get("label", "")
                                                           .startswith("bench/plain") else "#369"
                                                           for n in names[::-1]])
            for bar, n in zip(bars, names[::-1]):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                        f" {paths[n]['x_plain']:.2f}x", va="center", fontsize=8)
            ax.set_xlabel("thousand operations / s (x: ratio to the plain book)")
            ax.set_title(f"{sname}: {wname} workload, throughput")
            fig.tight_layout()
            f = folder / f"{sname}-{wname}-throughput.png"
            fig.savefig(f)
            plt.close(fig)
            files.append(str(f))
            fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
            for n, r in paths.items():
                lat = r.get("latency", {}).get("all")
                if not lat:
                    continue
                pts = [(p, v) for p, v in lat["curve_ns"] if p < 100]
                xs = [1 / (1 - p / 100) for p, _ in pts]
                ax.plot(xs, [v / 1000 for _, v in pts], marker=".", label=n)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = [p for p, _ in pts]
            ax.set_xticks([1 / (1 - p / 100) for p in ticks])
            ax.set_xticklabels([f"{p:g}" for p in ticks], fontsize=7)
            ax.set_xlabel("percentile")
            ax.set_ylabel("us per operation")
            ax.set_title(f"{sname}: {wname} workload, latency")
            ax.legend(fontsize=7)
            fig.tight_layout()
            f = folder / f"{sname}-{wname}-latency.png"
            fig.savefig(f)
            plt.close(fig)
            files.append(str(f))
    return files


# ---- the command -----------------------------------------------------------------------------

def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{text}: a fraction from 0 to below 1 (0.15: 15 %)")
    return v


def main(argv=None) -> int:
    """Exit 0; 1 if --compare found a regression past --threshold; 2 on a bad option, a missing
    or malformed report, or runs that do not compare."""
    ap = argparse.ArgumentParser(
        prog="perpdex bench", description="Run the benchmark suite: every path next to the plain "
        "Python book, in one process, on seeded workloads. Exit 0; 1 if --compare finds a "
        "regression past --threshold; 2 on a bad option, a missing or malformed report, or "
        "reports that do not compare (a --quick run against a full one, another suite, seed or "
        "workload).",
        epilog="documentation: docs/performance.md (in the repository)")
    ap.add_argument("--suite", choices=(*SUITES, "all"), help="what to run (default: core)")
    ap.add_argument("--quick", action="store_true", help="small workloads (seconds)")
    ap.add_argument("--json", metavar="FILE", help="write the report here")
    ap.add_argument("--report", metavar="FILE", help="read this report (an earlier --json) "
                    "instead of running the suite: print it, compare it, plot it")
    ap.add_argument("--compare", metavar="OLD.json", help="print new / old for every metric "
                    "with its unit and direction, and exit 1 if one is worse by more than "
                    "--threshold")
    ap.add_argument("--threshold", type=_fraction, default=0.15,
                    help="worse by more than this fraction is a regression (default 0.15)")
    ap.add_argument("--plot", metavar="DIR", help="write PNG plots here (needs matplotlib, "
                    "which `make install` and the extra `bench` bring)")
    ap.add_argument("--rounds", type=int, help="throughput rounds (default 3)")
    ap.add_argument("--seed", type=int, help="the workloads' seed (default 1)")
    ap.add_argument("--no-peers", action="store_true", help="leave out the PyPI peers")
    a = ap.parse_args(argv)
    given = [f for f, v in (("--suite", a.suite), ("--quick", a.quick), ("--json", a.json),
                            ("--rounds", a.rounds), ("--seed", a.seed),
                            ("--no-peers", a.no_peers)) if v]
    if a.report and given:
        ap.error(f"--report reads a finished run: {', '.join(given)} would be the run's own")
    try:
        old = load_report(a.compare) if a.compare else None
        if a.report:
            rep = load_report(a.report)
        else:
            options = {"suites": list(SUITES if a.suite == "all" else (a.suite or "core",)),
                       "quick": a.quick, "seed": 1 if a.seed is None else a.seed}
            why = old and unlike(options, old, a.compare)
            if why:
                raise ReportError(f"will not compare: {why}")
            if a.plot and _pyplot() is None:
                raise ReportError(NO_MATPLOTLIB)
            try:
                import hdrh  # noqa: F401  (the latency histograms)
            except ImportError:
                raise ReportError("the suite needs hdrhistogram: pip install 'perpdex[bench]' "
                                  "(`make install` in a checkout has it)") from None
            rep = run(options["suites"], a.quick, a.rounds, options["seed"], not a.no_peers,
                      log=lambda *x: print(*x, file=sys.stderr, flush=True))
        if old is not None:
            why = (unlike(rep["options"], old, a.compare) if a.report else None) or \
                unlike_workloads(rep, old, a.compare)
            if why:
                raise ReportError(f"will not compare: {why}")
    except ReportError as e:
        print(f"perpdex bench: {e}", file=sys.stderr)
        return 2
    print_report(rep)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rep, indent=1))
        print(f"\nwrote {a.json}")
    if a.plot:
        try:
            print("\nplots: " + ", ".join(plot(rep, a.plot)))
        except ReportError as e:
            print(f"perpdex bench: {e}", file=sys.stderr)
            return 2
    if old is not None and compare(rep, old, a.threshold):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
