"""Boot: a new venue's configured markets and opening deposits, and the check that a data
folder holding a venue is the venue the configuration describes (docs/config.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

from perpdex.engine import messages as M
from perpdex.engine.markets import market_spec

from .logfile import COMMAND, TURN, JournalError, decode, read, segments

log = logging.getLogger("perpdex.gateway")


class BootError(ValueError):
    """The configuration names something the engine refuses; the message gives its reason."""


def holds_a_venue(data_dir: Path) -> bool:
    """Whether a data folder holds a venue already (a journal segment or a snapshot)."""
    return bool(segments(data_dir / "journal")) or any(
        (data_dir / "snapshots").glob("*.snapshot"))


def boot_deposits(jdir: Path) -> dict | None:
    """{account: amount} of the deposits in a journal's first turn (the configured ones, made
    when the data folder was new); None when that turn is no longer there. O(first segment)."""
    out: dict = {}
    n = -1
    try:
        for n, (seq, kind, payload) in enumerate(read(jdir, 0, strict_start=False)):
            if n == 0 and seq != 1:
                return None
            if kind == TURN:
                return out
            if kind == COMMAND:
                cmd = decode(kind, payload)
                if type(cmd) is M.Deposit:
                    out[cmd.account] = out.get(cmd.account, 0) + cmd.amount
    except JournalError:
        return None
    return out if n >= 0 else None                # an empty journal: that turn is gone


def commands(cfg) -> list:
    """The commands that boot a new venue: the configured markets, their statuses and updates
    (docs/config.md), then the deposits."""
    return (list(cfg.markets)
            + [M.SetMarketStatus(market=m, status=st) for m, st in cfg.market_status.items()]
            + list(cfg.market_updates)
            + [M.Deposit(account=a.name, amount=a.deposit)
               for a in cfg.accounts.values() if a.deposit])


def refusal(cmd, ev) -> BootError:
    """The engine refused a boot command (its `rejected` event `ev`): the error saying so."""
    what = (f"market {ev.market}" if type(cmd) is M.CreateMarket
            else f"the deposit of account {ev.account}" if type(cmd) is M.Deposit
            else f"market {cmd.market}'s {type(cmd).__struct_config__.tag}")
    return BootError(f"{what}: the engine refuses it: {ev.reason}: {ev.detail}")


def differences(cfg, engine) -> tuple[list, str | None]:
    """How the configuration's markets and deposits differ from the recovered state: the
    markets the engine has (every parameter a client sees, `market_info`), and the deposits
    the data folder was booted with (its journal's first turn); and a note when those
    deposits cannot be read (that turn's segment was deleted). O(markets + accounts)."""
    diffs = []
    have = {sp.name: market_info(sp) for sp in engine.specs}
    want = {mk.market: market_info(market_spec(mk)) for mk in cfg.markets}
    for name, spec in want.items():
        if name not in have:
            diffs.append(f"market {name} is configured but not in the data folder")
            continue
        for key, value in spec.items():
            if have[name][key] != value:
                diffs.append(f"market {name}: {key} is {value!r} in the configuration, "
                             f"{have[name][key]!r} in the data folder")
    diffs += [f"the data folder has market {name}, which the configuration does not"
              for name in have if name not in want]
    booted = boot_deposits(cfg.data_dir / "journal")
    if booted is None:
        return diffs, ("the deposits were not compared: the journal's first turn is no "
                       "longer in the data folder")
    wanted = {a.name: a.deposit for a in cfg.accounts.values() if a.deposit}
    for name in sorted(set(wanted) | set(booted), key=str):
        if wanted.get(name, 0) != booted.get(name, 0):
            diffs.append(f"accounts.{name}.deposit is {wanted.get(name, 0)} in the "
                         f"configuration, {booted.get(name, 0)} when the data folder was "
                         f"booted")
    return diffs, None


def against(cfg, engine, durability) -> list[str]:
    """A data folder that holds a venue is that venue: a configuration whose markets or
    deposits differ stops the start (BootError naming each difference; `durability` is closed
    first, its thread and its lock), unless told that the state wins (`--state-wins`: then it is
    said, and served as recovered). The lines to say after what was recovered."""
    diffs, note = differences(cfg, engine)
    lines = [] if note is None else [f"perpdex: {note}"]
    if not diffs:
        return lines
    said = f"the configuration differs from the data folder {cfg.data_dir}: " + "; ".join(diffs)
    if cfg.state_wins:
        log.warning("%s; serving the data folder's state (--state-wins)", said,
                    extra={"event": "config_differs", "differences": diffs})
        return lines + [f"perpdex: {said}; serving the data folder's state, as --state-wins "
                        f"asks"]
    close = getattr(durability, "close", None)
    if close is not None:
        close()
    raise BootError(f"{said}. A data folder keeps the venue it holds (deposits are credited "
                    f"once, when it is new): make the configuration match it, ask an admin "
                    f"(deposit, create_market, update_market), or serve the folder as it is "
                    f"with --state-wins (docs/config.md)")


def market_info(sp) -> dict:
    """What a client needs to trade in a market and to compute its own margin (the `markets`
    reply; docs/protocol.md)."""
    tiers = [{"max_notional": t.max_notional, "imf_ppm": t.imf_ppm, "mmf_ppm": t.mmf_ppm,
              "imf_deduction": t.imf_deduction, "mmf_deduction": t.mmf_deduction}
             for t in sp.tiers]
    return {"market": sp.name, "tick_size": str(sp.tick_size), "lot_size": str(sp.lot_size),
            "min_qty": sp.min_qty, "max_price": sp.max_price, "max_qty": sp.max_qty,
            "multiplier": sp.multiplier, "maker_fee_ppm": sp.maker_fee_ppm,
            "taker_fee_ppm": sp.taker_fee_ppm, "liquidation_fee_ppm": sp.liquidation_fee_ppm,
            "imf_ppm": sp.imf_ppm, "mmf_ppm": sp.mmf_ppm, "tiers": tiers,
            "max_leverage": 1_000_000 // (sp.tiers[0].imf_ppm if sp.tiers else sp.imf_ppm),
            "price_band_ppm": sp.price_band_ppm, "funding_interval_s": sp.funding_interval_s,
            "funding_cap_ppm": sp.funding_cap_ppm, "interest_ppm": sp.interest_ppm,
            "oracle_max_age_s": sp.oracle_max_age_s,
            "max_orders_per_account": sp.max_orders_per_account,
            "oracle_sources": [{"name": n, "weight": w} for n, w in sp.sources],
            "oracle_min_sources": sp.min_sources,
            "oracle_max_deviation_ppm": sp.max_deviation_ppm,
            "mark_ema_updates": sp.mark_ema_updates,
            "velocity_max_ppm": sp.velocity_max_ppm, "velocity_pause_s": sp.velocity_pause_s}
