"""The matching benchmark: throughput and per-command latency, core paths side by side with the
pure-Python reference engine of bench/reference.py, in one run on one machine.

Superseded by `perpdex bench` (bench/suite.py, docs/performance.md), whose baseline is the plain
Python book (bench/plain_book.py). The "x python" column here is a ratio to the reference engine,
the whole contract in Python (accounts, money, events as dicts): not a plain book, so not the
ratio to quote against one.

    python -m bench.run [--commands 200000] [--depth 20000] [--seed 1] [--json FILE]

Paths measured (each on a fresh engine that first replays the same setup: market, oracle and a
book of `depth` resting orders):
  core per-command   Engine.execute(Struct) -> [event Structs]
  core batch         Engine.execute_batch(msgpack bytes) -> msgpack bytes (decode + match + encode)
  core batch, no margin   the same on Engine(margin=False): what the margin checks cost
  replay jsonl       JSON Lines bytes -> CommandReader -> Engine.execute_many -> JSON Lines bytes
  replay msgpack     the same with msgpack (the engine's fast path); both as `perpdex replay`
                     runs them, in 1 MiB chunks
  python per-command ReferenceEngine.execute(Struct) -> [event dicts]
  python replay      msgspec decode per line -> ReferenceEngine -> msgspec encode per event

Throughput is timed on an untimed-per-command loop; latency on a second pass that times every
call (time.perf_counter_ns, whose own cost, about 50-80 ns, is included) into HDR histograms.
For the batch and replay paths, latency is that of a batch of one command (one request).
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import sys
import time
from array import array
from pathlib import Path

import msgspec
from hdrh.histogram import HdrHistogram

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import generate, kind_of  # noqa: E402
from engine import Engine  # noqa: E402
from gateway.replay import replay_stream  # noqa: E402
from engine.messages import AnyCommand  # noqa: E402
from bench.reference import ReferenceEngine  # noqa: E402



class _Sink:
    """Where replayed events go in the benchmark: counted, not kept."""

    def __init__(self):
        self.bytes = 0

    def write(self, b):
        self.bytes += len(b)

    def flush(self):
        pass

KINDS = ("passive", "cancel", "cross", "market", "oracle")


def _no_margin():
    return Engine(margin=False)


def _fresh(factory, setup):
    eng = factory()
    for c in setup:
        eng.execute(c)
    return eng


def _hist():
    return HdrHistogram(1, 60_000_000_000, 3)


def _latency(call, items, kinds):
    """Time every call; returns {kind: histogram} with an 'all' entry."""
    pc = time.perf_counter_ns
    lat = array("q", bytes(8 * len(items)))
    for i, x in enumerate(items):
        t0 = pc()
        call(x)
        lat[i] = pc() - t0
    hists = {"all": _hist()}
    for k in KINDS:
        hists[k] = _hist()
    for v, k in zip(lat, kinds):
        v = max(v, 1)
        hists["all"].record_value(v)
        hists[k].record_value(v)
    return hists


def _summary(hists):
    out = {}
    for k, h in hists.items():
        if h.get_total_count():
            out[k] = {
                "count": h.get_total_count(),
                "p50_ns": h.get_value_at_percentile(50),
                "p99_ns": h.get_value_at_percentile(99),
                "p99.9_ns": h.get_value_at_percentile(99.9),
                "max_ns": h.get_max_value(),
            }
    return out


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def run(commands=200_000, depth=20_000, seed=1, latency=True, log=print):
    t0 = time.perf_counter()
    wl = generate(seed, commands, depth)
    log(f"workload: seed {seed}, {depth:,} resting orders, {commands:,} commands "
        f"(generated in {time.perf_counter() - t0:.1f} s)")
    kinds = wl.kinds()
    flow = wl.flow
    mp = [msgspec.msgpack.encode(c) for c in flow]
    js = [msgspec.json.encode(c) + b"\n" for c in flow]
    mp_all, js_all = b"".join(mp), b"".join(js)
    results = {}

    def record(name, seconds, hists=None):
        results[name] = {"seconds": seconds, "commands_per_s": len(flow) / seconds}
        if hists:
            results[name]["latency"] = _summary(hists)
        log(f"  {name:<20} {len(flow) / seconds:>12,.0f} commands/s")

    # ---- core, per command
    def each(execute):
        for c in flow:
            execute(c)

    eng = _fresh(Engine, wl.setup)
    record("core per-command", _timed(lambda: each(eng.execute)),
           _latency(_fresh(Engine, wl.setup).execute, flow, kinds) if latency else None)

    # ---- core, batch entry point (msgpack bytes in, msgpack bytes out)
    chunks = [b"".join(mp[i:i + 4096]) for i in range(0, len(mp), 4096)]

    def batch(e=_fresh(Engine, wl.setup)):
        for chunk in chunks:
            e.execute_batch(chunk, "msgpack")
    one = _fresh(Engine, wl.setup)
    record("core batch", _timed(batch),
           _latency(lambda b: one.execute_batch(b, "msgpack"), mp, kinds) if latency else None)

    # ---- the same with margin off: what the margin checks cost
    no_margin = _fresh(_no_margin, wl.setup)
    record("core batch, no margin", _timed(lambda: batch(no_margin)))

    # ---- full replay, both formats, in 1 MiB chunks as `perpdex replay` reads
    for fmt, data, items in (("jsonl", js_all, js), ("msgpack", mp_all, mp)):
        def replay(fmt=fmt, data=data, e=_fresh(Engine, wl.setup)):
            replay_stream(io.BytesIO(data), _Sink(), fmt, fmt, engine=e)
        solo = _fresh(Engine, wl.setup)
        record(f"replay {fmt}", _timed(replay),
               _latency(lambda b, fmt=fmt: solo.execute_batch(b, fmt), items, kinds)
               if latency else None)

    # ---- the plain pure-Python engine
    ref = _fresh(ReferenceEngine, wl.setup)
    record("python per-command", _timed(lambda: each(ref.execute)),
           _latency(_fresh(ReferenceEngine, wl.setup).execute, flow, kinds) if latency else None)

    dec = msgspec.json.Decoder(AnyCommand)
    enc = msgspec.json.encode

    def py_replay(e=_fresh(ReferenceEngine, wl.setup)):
        out = []
        for n, line in enumerate(js_all.splitlines()):
            for ev in e.execute(dec.decode(line)):
                out.append(enc(ev))
            if n % 4096 == 4095:
                b"\n".join(out)
                out.clear()
    record("python replay jsonl", _timed(py_replay))

    base = results["python per-command"]["commands_per_s"]
    for name, r in results.items():
        r["x_python_per_command"] = r["commands_per_s"] / base
    results["python replay jsonl"]["x_python_per_command"] = (
        results["python replay jsonl"]["commands_per_s"] / base)
    r = results
    ratios = {
        "per-command vs python per-command": r["core per-command"]["commands_per_s"] / base,
        "batch vs python per-command": r["core batch"]["commands_per_s"] / base,
        "replay jsonl vs python replay jsonl": r["replay jsonl"]["commands_per_s"]
        / r["python replay jsonl"]["commands_per_s"],
        "margin on vs off (batch)": r["core batch"]["commands_per_s"]
        / r["core batch, no margin"]["commands_per_s"],
    }
    meta = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"{__import__('os').cpu_count()} cores",
        "python": platform.python_version(),
        "cython": __import__("Cython").__version__,
        "msgspec": msgspec.__version__,
        "seed": seed, "commands": commands, "depth": depth,
        "mix": {k: kinds.count(k) for k in KINDS},
    }
    return {"meta": meta, "results": results, "ratios": ratios}


def print_report(rep, out=sys.stdout):
    w = out.write
    m = rep["meta"]
    w(f"\nperpdex matching benchmark: {m['commands']:,} commands over a book of {m['depth']:,} "
      f"(seed {m['seed']})\n{m['machine']}; Python {m['python']}, Cython {m['cython']}, "
      f"msgspec {m['msgspec']}\nmix: " + ", ".join(f"{k} {v:,}" for k, v in m["mix"].items()) + "\n\n")
    w(f"| path | commands/s | x python | p50 us | p99 us | p99.9 us |\n|---|---:|---:|---:|---:|---:|\n")
    for name, r in rep["results"].items():
        lat = r.get("latency", {}).get("all")
        cells = [f"{lat[k] / 1000:.2f}" for k in ("p50_ns", "p99_ns", "p99.9_ns")] if lat else ["", "", ""]
        w(f"| {name} | {r['commands_per_s']:,.0f} | {r['x_python_per_command']:.1f} | "
          + " | ".join(cells) + " |\n")
    w("\nlatency by command kind, us p50 / p99 / p99.9:\n\n| kind | "
      + " | ".join(n for n, r in rep["results"].items() if "latency" in r) + " |\n|---|"
      + "---|" * sum(1 for r in rep["results"].values() if "latency" in r) + "\n")
    for k in KINDS:
        cells = []
        for name, r in rep["results"].items():
            lat = r.get("latency", {}).get(k)
            if "latency" in r:
                cells.append(f"{lat['p50_ns'] / 1000:.2f} / {lat['p99_ns'] / 1000:.2f} / "
                             f"{lat['p99.9_ns'] / 1000:.2f}" if lat else "")
        w(f"| {k} | " + " | ".join(cells) + " |\n")
    w("\nratios:\n")
    for k, v in rep["ratios"].items():
        w(f"  {k}: {v:.1f}x\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commands", type=int, default=200_000)
    ap.add_argument("--depth", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-latency", action="store_true", help="throughput only")
    ap.add_argument("--json", help="also write the report here")
    a = ap.parse_args(argv)
    rep = run(a.commands, a.depth, a.seed, latency=not a.no_latency)
    print_report(rep)
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
