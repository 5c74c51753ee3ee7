"""`perpdex stress` on the command line: the options to a run, the report written out."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .stress_inputs import Options, StressError, load_scenario


def stress(args, out=sys.stdout, err=sys.stderr) -> int:
    from . import stress_report
    from .stress import run, to_json
    for name in ("steps", "step_seconds", "seed"):
        v = getattr(args, name)
        low = 0 if name == "seed" else 1
        if v is not None and not low <= v <= (86_400 if name == "step_seconds" else 2**62):
            print(f"perpdex stress: --{name.replace('_', '-')} {v}: out of range (at least "
                  f"{low})", file=err)
            return 2
    if args.insurance_usd is not None and not 0 <= args.insurance_usd <= 1e12:
        print(f"perpdex stress: --insurance-usd {args.insurance_usd:g}: out of range "
              f"(0 to 1e12 USD)", file=err)
        return 2
    opts = Options(state=args.state, paths=args.path, oracle=args.oracle, sets=args.sets,
                   insurance_usd=args.insurance_usd, seed=args.seed, steps=args.steps,
                   step_seconds=args.step_seconds, events=args.events,
                   progress=not args.quiet and err.isatty())
    sweep, compare = getattr(args, "sweep", None), getattr(args, "compare", None) or []
    jobs = getattr(args, "jobs", None)
    try:
        if jobs is not None and not 1 <= jobs <= 256:
            raise StressError(f"--jobs {jobs}: out of range (1 to 256)")
        if sweep and compare:
            raise StressError("--sweep and --compare: one at a time (a sweep already compares "
                              "every value it runs)")
        if (sweep or compare) and args.events:
            raise StressError("--events: a single run's; not with --sweep or --compare")
        sc = load_scenario(args.scenario)
        t0 = time.perf_counter()
        if sweep or compare:
            from . import stress_sweep as SW
            workers = jobs or SW.cores()
            if sweep:
                result = SW.sweep(sc, opts, sweep, workers, _progress(opts.progress, err))
                text, page = stress_report.sweep_text, stress_report.sweep_html
            else:
                result = SW.compare(sc, opts, compare, workers)
                text, page = stress_report.compare_text, stress_report.compare_html
            seconds = time.perf_counter() - t0
        else:
            result, seconds = run(sc, opts, err)
            text, page = stress_report.text, stress_report.html
    except StressError as e:
        print(f"perpdex stress: {e}", file=err)
        return 2
    try:
        if args.json:
            data = to_json(result)
            if args.json == "-":
                out.buffer.write(data) if hasattr(out, "buffer") else out.write(data.decode())
            else:
                Path(args.json).write_bytes(data)
        if args.html:
            Path(args.html).write_text(page(result))
    except OSError as e:
        print(f"perpdex stress: {e.filename}: cannot be written: {e.strerror}", file=err)
        return 2
    if not args.quiet:
        (err if args.json == "-" else out).write(text(result, seconds))
    return 0 if _balanced(result) else 1


def _balanced(result: dict) -> bool:
    if "points" in result:
        return result["audit_balanced_every_run"]
    return all(r["summary"]["audit"]["balanced_every_step"]
               for r in ([result["a"], result["b"]] if "a" in result else [result]))


def _progress(on: bool, err):
    if not on:
        return None

    def show(done: int, total: int) -> None:
        err.write(f"\rperpdex stress: run {done}/{total}" + ("\n" if done == total else ""))
        err.flush()
    return show
