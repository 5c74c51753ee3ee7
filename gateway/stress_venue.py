"""The venue a `perpdex stress` run starts from (docs/stress.md, "The venue"): the markets of the
embedded default or of a server configuration with the scenario's and the command line's
parameters set, or the state of a data folder or snapshot of `perpdex serve`, read only; and the
insurance fund's seed.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from perpdex.engine import Engine, messages as M

from .stress_inputs import USD, Options, Scenario, StressError, apply_overrides, parse_set

FUND = "insurance"                  # the insurance fund's account


class Venue(NamedTuple):
    engine: Engine
    description: str                # for the report: where the markets and the state came from
    creates: list                   # the create_market commands still to run (none from a state)
    state: str | None               # the data folder or snapshot read, if any


def open_venue(sc: Scenario, opts: Options) -> Venue:
    """The engine with the venue's state (a data folder's or a snapshot's), or an empty engine
    and the markets' commands to create them with the parameters set."""
    f = sc.file
    sets = settings(sc, opts)
    state = opts.state or f.venue.state
    if state and opts.state is None and not Path(state).is_absolute():
        state = str(sc.base / state)
    if state:
        eng, description = load_state(state, sets, lambda cs: apply_overrides(cs, sets))
        return Venue(eng, description, [], state)
    description = ("the embedded default's markets" if f.venue.markets == "default"
                   else f"the markets of {f.venue.markets}")
    return Venue(Engine(), description, apply_overrides(market_commands(sc), sets), None)


def insurance_seed(sc: Scenario, opts: Options, state: str | None) -> int:
    """The fund's seed in quote units: the command line's, else the scenario's (a venue state's
    fund is already in it, so the scenario's default is not added to it)."""
    seed_usd = opts.insurance_usd if opts.insurance_usd is not None else (
        sc.file.venue.insurance_usd if not state or "insurance_usd" in sc.text else 0.0)
    return int(Decimal(repr(seed_usd)) * USD)


def market_commands(sc: Scenario) -> list[M.CreateMarket]:
    from .config import ConfigError, default_config, load_config
    name = sc.file.venue.markets
    if name == "default":
        return list(default_config().markets)
    path = Path(name)
    if not path.is_absolute():
        path = sc.base / path
    try:
        return list(load_config(path).markets)
    except ConfigError as e:
        raise StressError(f"{sc.where(['venue', 'markets'])}: venue.markets: {e}")


def settings(sc: Scenario, opts: Options) -> list[tuple]:
    """(where, market or None, key, value) of every parameter set: the scenario's [venue.set],
    then the command line's --set, then a sweep's or a comparison's point."""
    out = []
    for key, value in sc.file.venue.set.items():
        where = f"{sc.where(['venue', 'set', key])}: venue.set"
        if isinstance(value, dict):             # [venue.set."BTC-PERP"] table
            for k, v in value.items():
                out.append((f"{sc.where(['venue', 'set', key, k])}: venue.set.{key}", key, k, v))
        else:
            out.append((where, None, key, value))
    for where, option in [(f"--set {o}", o) for o in opts.sets] + opts.point_sets:
        market, key, value = parse_set(option)
        out.append((where, market, key, value))
    return out


def load_state(state: str, settings: list, rewrite) -> tuple[Engine, str]:
    """An engine in the state of a data folder (the newest snapshot, then the journal after it)
    or of a snapshot file; read only. With `settings`, the journal is replayed from its first
    command with the markets' parameters rewritten (needs a whole journal)."""
    from . import journal as J
    path = Path(state)
    if not path.exists():
        raise StressError(f"--state {state}: no such file or folder")
    if path.is_file():
        if settings:
            raise StressError(f"{settings[0][0]}: a snapshot fixes its markets' parameters (the "
                              f"engine has no command that changes them); give the data folder "
                              f"with its whole journal to replay it with other parameters")
        try:
            return J.engine_from_snapshot(J.read_snapshot(path).engine), f"snapshot {path}"
        except (J.JournalError, ValueError) as e:
            raise StressError(f"--state {state}: not a readable snapshot: {e}")
    jdir, sdir = path / "journal", path / "snapshots"
    if not jdir.is_dir():
        raise StressError(f"--state {state}: neither a snapshot file nor a data folder (no "
                          f"journal/ in it)")
    try:
        recs, scan = J.read_all(jdir)
    except J.JournalError as e:
        raise StressError(f"--state {state}: the journal cannot be read: {e}")
    cmds = [(seq, J.decode(k, p)) for seq, k, p in recs if k == J.COMMAND]
    if settings:
        if scan.first not in (0, 1):
            raise StressError(f"{settings[0][0]}: the journal of {state} starts at seq "
                              f"{scan.first} (covered segments deleted), so it cannot be replayed "
                              f"with other market parameters")
        eng = Engine()
        creates = [c for _, c in cmds if type(c) is M.CreateMarket]
        new = {c.market: c for c in rewrite(creates)}
        for _, c in cmds:
            eng.execute(new.get(c.market, c) if type(c) is M.CreateMarket else c)
        return eng, f"data folder {path} (its journal replayed with the parameters set)"
    eng, after, what = Engine(), 0, "its journal"
    for snap_path in reversed(J.snapshots(sdir)):
        try:
            snap = J.read_snapshot(snap_path)
            eng, after = J.engine_from_snapshot(snap.engine), snap.seq
            what = f"snapshot {snap_path.name} and the journal after it"
            break
        except (J.JournalError, ValueError):
            continue
    if after == 0 and scan.first not in (0, 1):
        raise StressError(f"--state {state}: the journal starts at seq {scan.first} and no "
                          f"snapshot reads")
    for seq, c in cmds:
        if seq > after:
            eng.execute(c)
    return eng, f"data folder {path} ({what})"
