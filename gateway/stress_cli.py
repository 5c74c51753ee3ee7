"""`perpdex stress` on the command line: the options to a run, the report written out."""
from __future__ import annotations

import sys
from pathlib import Path

from .stress_inputs import StressError, load_scenario


def stress(args, out=sys.stdout, err=sys.stderr) -> int:
    from . import stress_report
    from .stress import Options, run, to_json
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
    try:
        result, seconds = run(load_scenario(args.scenario), opts, err)
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
            Path(args.html).write_text(stress_report.html(result))
    except OSError as e:
        print(f"perpdex stress: {e.filename}: cannot be written: {e.strerror}", file=err)
        return 2
    if not args.quiet:
        (err if args.json == "-" else out).write(stress_report.text(result, seconds))
    return 0 if result["summary"]["audit"]["balanced_every_step"] else 1
