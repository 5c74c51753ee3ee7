"""Sweeps and side-by-side comparisons of `perpdex stress` (docs/stress.md, "Sweeps").

A sweep runs the same scenario once per value of one parameter (`--sweep KEY=FROM:TO:STEP`): a
venue parameter that `--set` takes, the fund's seed (`insurance_usd`) or the crash's size
(`crash_scale`, every move of the price paths from their start scaled in log terms). The runs
go to a pool of processes (as many as the cores, or `--jobs`); each run is deterministic from
the scenario and its seed alone, and the points are reported in the grid's order, so the report
does not depend on which process ran what or when. A comparison (`--compare`) runs two
parameter sets on the same crash.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from .stress import run
from .stress_inputs import SETTABLE, Options, Scenario, StressError
from .stress_report import num

MAX_POINTS = 101
SPECIAL = {"insurance_usd": (0.0, 1e12), "crash_scale": (0.0, 10.0)}
SWEEPABLE = tuple(k for k in SETTABLE if k != "tiers") + tuple(SPECIAL)


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                                   # not Linux
        return max(1, os.cpu_count() or 1)


# ---- the specs ---------------------------------------------------------------------------------

def _key(where: str, key: str, allowed: tuple) -> tuple[str | None, str]:
    market, _, name = key.strip().rpartition(".")
    if name == "tiers" and name not in allowed:
        raise StressError(f"{where}: tiers is a list, not a number: it cannot be swept "
                          f"(--compare takes it)")
    if name not in allowed:
        verb = "compared" if "tiers" in allowed else "swept"
        raise StressError(f"{where}: {name!r} cannot be {verb} (one of "
                          f"{', '.join(allowed)}, optionally as MARKET.KEY)")
    if market and name == "insurance_usd":
        raise StressError(f"{where}: insurance_usd is the venue's one fund, not a market's")
    return market or None, name


def _number(where: str, name: str, text: str) -> Decimal:
    try:
        v = Decimal(text.strip())
        if not v.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise StressError(f"{where}: {text.strip()!r} is not a number")
    if name in SPECIAL:
        lo, hi = SPECIAL[name]
        if not lo <= v <= hi:
            raise StressError(f"{where}: {name} {v} is outside {num(lo)} to {num(hi)}")
    elif v != v.to_integral_value() or v < 0:
        raise StressError(f"{where}: {name} takes whole numbers from 0, not {v}")
    return v


def parse_sweep(spec: str) -> tuple[str | None, str, list[Decimal]]:
    """`[MARKET.]KEY=FROM:TO:STEP` -> (market, key, the values from FROM to TO by STEP)."""
    where = f"--sweep {spec}"
    key, sep, grid = spec.partition("=")
    parts = grid.split(":")
    if not sep or len(parts) != 3:
        raise StressError(f"{where}: expected [MARKET.]KEY=FROM:TO:STEP, e.g. "
                          f"mmf_ppm=20000:80000:10000 or insurance_usd=0:2000000:250000")
    market, name = _key(where, key, SWEEPABLE)
    lo, hi = _number(where, name, parts[0]), _number(where, name, parts[1])
    try:
        step = Decimal(parts[2].strip())
    except InvalidOperation:
        raise StressError(f"{where}: the step {parts[2].strip()!r} is not a number")
    if not step.is_finite() or step <= 0:
        raise StressError(f"{where}: the step must be above zero")
    if lo > hi:
        raise StressError(f"{where}: FROM {lo} is above TO {hi}")
    if name not in SPECIAL and step != step.to_integral_value():
        raise StressError(f"{where}: {name} takes whole numbers, so the step must be a whole "
                          f"number")
    n = int((hi - lo) / step) + 1
    if n > MAX_POINTS:
        raise StressError(f"{where}: {n} points; a sweep runs at most {MAX_POINTS}")
    return market, name, [lo + step * i for i in range(n)]


_SPLIT = re.compile(r",(?=\s*[A-Za-z][\w.\-]*\s*=)")


def parse_compare(spec: str) -> list[tuple[str | None, str, str]]:
    """`KEY=VALUE[,KEY=VALUE]` (KEY as in a sweep, or tiers) -> [(market, key, value)]."""
    where = f"--compare {spec}"
    out = []
    for item in _SPLIT.split(spec):
        key, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise StressError(f"{where}: expected KEY=VALUE[,KEY=VALUE...], e.g. "
                              f"mmf_ppm=80000,insurance_usd=2000000")
        market, name = _key(where, key, SWEEPABLE + ("tiers",))
        if name != "tiers":
            value = str(_number(where, name, value))
        out.append((market, name, value.strip()))
    return out


def _label(market: str | None, name: str, value) -> str:
    return f"{market + '.' if market else ''}{name}={value}"


def point_options(opts: Options, where: str, items: list[tuple[str | None, str, object]]
                  ) -> Options:
    """The options of one run: `items` (market, key, value) on top of the command line's."""
    sets, crash, fund = list(opts.point_sets), dict(opts.crash_scale), opts.insurance_usd
    for market, name, value in items:
        if name == "insurance_usd":
            fund = float(value)
        elif name == "crash_scale":
            crash[market] = (float(value), where)
        else:
            sets.append((f"{where}: at {_label(market, name, value)}",
                         _label(market, name, value)))
    return replace(opts, point_sets=sets, crash_scale=crash, insurance_usd=fund, events=None,
                   progress=False)


# ---- running -----------------------------------------------------------------------------------

def _one(job: tuple[Scenario, Options]) -> tuple[dict | None, str | None]:
    try:
        return run(*job, out=sys.stderr)[0], None
    except StressError as e:
        return None, str(e)


def run_all(sc: Scenario, jobs: list[Options], workers: int, progress=None) -> list[dict]:
    """Every run, in the order given, on up to `workers` processes; the first error in that
    order is raised."""
    n = min(workers, len(jobs))
    if n <= 1:
        results = []
        for i, o in enumerate(jobs):
            results.append(_one((sc, o)))
            if progress:
                progress(i + 1, len(jobs))
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in
                                          multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(n, mp_context=ctx) as pool:
            results = []
            for r in pool.map(_one, [(sc, o) for o in jobs]):
                results.append(r)
                if progress:
                    progress(len(results), len(jobs))
    for _, err in results:
        if err is not None:
            raise StressError(err)
    return [r for r, _ in results]


# ---- a sweep -----------------------------------------------------------------------------------

def _value(name: str, v: Decimal):
    return int(v) if name not in SPECIAL else float(v)


def _outcome(rep: dict) -> dict:
    s = rep["summary"]
    return {"bad_debt_usd": s["bad_debt_usd"], "insolvent": s["insolvent"],
            "accounts_liquidated": s["accounts_liquidated"],
            "liquidations": s["liquidations"], "liquidated_usd": s["liquidated_usd"],
            "book_share": s["book_share"], "adl_accounts": s["adl_accounts"],
            "insurance_fund_usd": s["insurance_fund_usd"],
            "socialised_usd": s["socialised"]["usd"],
            "peak_below_maintenance": s["peak_below_maintenance"],
            "audit_balanced": s["audit"]["balanced_every_step"],
            "low_usd": {m: v["low_usd"] for m, v in rep["markets"].items()}}


def _answer(label: str, values: list, ok: list[bool], what: str, largest: bool) -> dict:
    """The smallest (or, for the crash's size, largest) value swept from which on `what` holds
    at every value swept, and the sentence that says so."""
    order = list(range(len(values)))[::-1] if largest else list(range(len(values)))
    first = next((i for i in order if ok[i]), None)
    holds_on = None
    for i in reversed(order):                  # from the far end back while it holds
        if not ok[i]:
            break
        holds_on = i
    word, side = ("largest", "smaller") if largest else ("smallest", "larger")
    span = f"{num(values[0])} to {num(values[-1])}"
    if first is None:
        text = f"no {label} swept ({span}) gives {what} in this crash"
    elif holds_on == order[0]:
        text = (f"every {label} swept ({span}) gives {what} in this crash, the {word} "
                f"({num(values[first])}) included")
    elif holds_on == first:
        text = (f"the {word} {label} with {what} in this crash: {num(values[first])} (and "
                f"every {side} value swept)")
    else:
        text = (f"the {word} {label} with {what} in this crash: {num(values[first])}, but not "
                f"at every {side} value swept" + (
                    "" if holds_on is None else
                    f"; at every one {'up to' if largest else 'from'} {num(values[holds_on])}"
                    f"{'' if largest else ' up'}"))
    return {"value": None if first is None else values[first],
            "holds_from": None if holds_on is None else values[holds_on], "sentence": text}


def sweep(sc: Scenario, opts: Options, spec: str, workers: int, progress=None) -> dict:
    market, name, grid = parse_sweep(spec)
    where = f"--sweep {spec}"
    jobs = [point_options(opts, where, [(market, name, _value(name, v))]) for v in grid]
    reports = run_all(sc, jobs, workers, progress)
    values = [_value(name, v) for v in grid]
    points = [{"value": v, **_outcome(r)} for v, r in zip(values, reports)]
    label = (market + "." if market else "") + name
    largest = name == "crash_scale"
    first = reports[0]["inputs"]
    answers = {
        "no_bad_debt": _answer(label, values, [p["bad_debt_usd"] == 0 for p in points],
                               "no bad debt", largest),
        "no_adl": _answer(label, values, [p["liquidations"]["adl"] == 0 for p in points],
                          "no ADL", largest),
    }
    return {
        "perpdex_stress_sweep": 1,
        "inputs": {"scenario": first["scenario"], "venue": first["venue"],
                   "seed": first["seed"], "steps": first["steps"],
                   "step_seconds": first["step_seconds"], "population": first["population"],
                   "makers": first["makers"], "set": opts.sets,
                   "insurance_usd": reports[0]["summary"]["insurance_fund_usd"]["seeded"]
                   if name != "insurance_usd" else None,
                   "sweep": {"spec": spec, "market": market, "key": name, "values": values}},
        "markets": {m: {"path": v["path"], "oracle": v["oracle"], "start_usd": v["start_usd"]}
                    for m, v in reports[0]["markets"].items()},
        "points": points,
        "answers": answers,
        "audit_balanced_every_run": all(p["audit_balanced"] for p in points),
    }


# ---- a comparison ------------------------------------------------------------------------------

def compare(sc: Scenario, opts: Options, specs: list[str], workers: int) -> dict:
    if len(specs) > 2:
        raise StressError("--compare: given more than twice (once: the scenario against it; "
                          "twice: one set against the other)")
    sides = [[]] + [parse_compare(s) for s in specs] if len(specs) == 1 else \
        [parse_compare(s) for s in specs]
    wheres = (["the scenario"] if len(specs) == 1 else []) + [f"--compare {s}" for s in specs]
    jobs = [point_options(opts, w, items) for w, items in zip(wheres, sides)]
    a, b = run_all(sc, jobs, workers)
    labels = [", ".join(_label(*i) for i in items) or "as the scenario sets it"
              for items in sides]
    return {"perpdex_stress_compare": 1,
            "labels": {"a": labels[0], "b": labels[1]},
            "difference": _diff(a["summary"], b["summary"]),
            "a": a, "b": b}


def _diff(a, b):
    """b - a for every number of the summary (nested as it is)."""
    if isinstance(a, dict):
        return {k: _diff(a[k], b[k]) for k in a if k in b and _diff(a[k], b[k]) is not None}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        d = b - a
        return round(d, 4) if isinstance(d, float) and not math.isnan(d) else d
    return None
