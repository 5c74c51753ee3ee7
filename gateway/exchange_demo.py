"""`perpdex demo`: the exchange, live. The server, market makers, takers and leveraged traders
run as separate processes talking ZeroMQ; this process feeds the oracle, watches the public
stream and the leveraged traders' private streams, prints the market once a second, and ends
with the audit.

The story, in three acts:

1. the market makers quote around a random walk; three traders build 10x longs (lev-1 in BTC,
   lev-2 and lev-3 in ETH) while two takers trade at market;
2. ETH gaps down 20 % in one oracle update: lev-2 and lev-3 are bankrupt at once, the book has
   nothing above their bankruptcy prices, the insurance fund (seeded small on purpose) takes the
   first over (backstop) and cannot afford the second, whose loss is auto-deleveraged against the
   profitable shorts (ADL);
3. BTC slides about 15 %: lev-1 gets a margin call, then is liquidated into the book step by step.

Every child runs in its own process group with its output in a log file of the demo's temporary
folder. However the demo ends (the end of the run, an error, Ctrl-C or SIGTERM), every child is
stopped (SIGTERM to its group, SIGKILL after a grace period) and the temporary folder, which holds
every secret key, is removed.
"""
from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec
import zmq

from .client import Client, Timeout, curve_socket, units
from .config import DEFAULT_TOML
from .natslocal import free_port

ROOT = Path(__file__).resolve().parent.parent
USD = 1_000_000
GRACE_S = 5.0                   # how long a child may take to stop after SIGTERM
START = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}          # index, ticks
# The demo's own accounts, on top of the embedded default's (lev-1 has 20,000 USD there).
EXTRA_ACCOUNTS = {"lev-2": 1_000, "lev-3": 10_000}          # USD
INSURANCE_SEED = 3_000                                      # USD: enough for lev-2, not lev-3
ETH_GAP = 0.20
BTC_SLIDE = 0.15


class Stopped(Exception):
    """SIGTERM or Ctrl-C: stop the children, clean up, say so in one line."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class ServerFailed(RuntimeError):
    pass


class Children:
    """The demo's processes: each in its own process group (so Ctrl-C at the terminal reaches the
    demo alone, and stopping one stops everything it started), output to a log file."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        try:
            p = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        finally:
            log.close()
        self.procs.append((name, p))
        return p

    def output(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Clients first (the server sees them go), then the server; SIGKILL what lingers."""
        order = self.procs[1:][::-1] + self.procs[:1]
        for _, p in order:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for _, p in order:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
            _signal_group(p, signal.SIGKILL)      # anything it left behind in its group


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Feeder:
    """The oracle's connection: one oracle update a market each refresh."""

    def __init__(self, ctx, router: str, server_key: str, secret_key: str):
        self.sock = curve_socket(ctx, zmq.DEALER, server_key, secret_key)
        self.sock.connect(router)
        self.ids = itertools.count(time.time_ns())

    def update(self, market: str, price: int) -> None:
        oracle_id = next(self.ids)
        self.sock.send(msgspec.msgpack.encode({"req_id": oracle_id, "type": "oracle",
                                               "market": market, "price": price}))
        while True:
            if not self.sock.poll(5000):
                raise Timeout("the server did not answer the oracle feed within 5 s")
            if msgspec.msgpack.decode(self.sock.recv()).get("req_id") == oracle_id:
                return

    def close(self):
        self.sock.close(linger=0)


class View:
    """What the demo prints: amounts in USD, sizes in the base currency."""

    def __init__(self, out, specs: dict):
        self.out = out
        self.specs = specs              # market -> Units
        self.mult = {}
        self.counts: Counter = Counter()
        self.liq_taker_fees: Counter = Counter()    # (account, market) -> taker fees of its
        #                                             liquidation fills not yet reported
        self.pending: list[tuple[int, str]] = []    # (seq, line): the private streams
        #                                             interleave by seq when flushed
        self.books: dict = {}                       # market -> its BookMirror
        self.quote: dict = {}                       # market -> index, mark, bid, ask at a mark

    def usd(self, quote_units: int) -> str:
        return f"{quote_units / USD:,.2f} USD"

    def price(self, market: str, ticks: int | None) -> str:
        return "-" if ticks is None else f"{self.specs[market].price(ticks):,}"

    def size(self, market: str, lots: int) -> str:
        return f"{self.specs[market].size(lots).normalize():f} {market.split('-')[0]}"

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def later(self, seq: int, text: str) -> None:
        self.pending.append((seq, text))

    def flush(self) -> None:
        """What the streams brought since the last flush, in the engine's order."""
        for _, text in sorted(self.pending):
            self.line(text)
        self.pending.clear()

    def public(self, u: dict) -> None:
        """An update of the public feed (gateway/mirror.py). At each `mark` the book mirror is
        read: the mark next to the best bid and ask it was computed from (the feed sends a
        turn's marks before that turn's book delta)."""
        kind = u["type"]
        self.counts[kind] += 1
        if kind == "mark":
            book = self.books[u["market"]]
            bid, ask = book.best_bid(), book.best_ask()
            self.quote[u["market"]] = {"index": u["index"], "mark": u["mark"],
                                       "bid": bid and bid[0], "ask": ask and ask[0]}
        elif kind == "liquidation":
            self.counts[f"liquidation:{u['kind']}"] += 1

    def liquidation(self, ev: dict) -> None:
        m, qty = ev["market"], ev["qty"]
        notional = qty * ev["price"] * self.mult[m]
        text = (f"      LIQUIDATION ({ev['kind']}): {ev['account']} {ev['side']}s "
                f"{self.size(m, qty)} at {self.price(m, ev['price'])} USD "
                f"({self.usd(notional)}, mark {self.price(m, ev['mark'])})")
        if ev["kind"] == "book":
            taker = self.liq_taker_fees.pop((ev["account"], m), 0)
            text += (f"; fees {self.usd(ev['fee'])} to the insurance fund, {self.usd(taker)} "
                     f"taker")
        elif ev["kind"] == "backstop":
            text += ": the insurance fund takes it over"
        else:
            text += ": auto-deleveraged"
        self.later(ev["seq"], text)

    def private(self, account: str, ev: dict) -> None:
        """An event of a watched account's private stream (what names an account is there
        only)."""
        kind = ev["type"]
        if kind == "margin_call":
            self.counts["margin_call"] += 1
            mm = ev["maintenance_margin"]
            self.later(ev["seq"], f"      MARGIN CALL: {account} equity {self.usd(ev['equity'])} "
                       f"is below 1.5x its maintenance {self.usd(mm)} (the warning line, "
                       f"{self.usd(mm * 3 // 2)}; liquidated below {self.usd(mm)})")
        elif kind == "fill" and ev["liquidation"] and ev["liquidity"] == "taker":
            self.liq_taker_fees[(account, ev["market"])] += ev["fee"]
        elif kind == "liquidation" and ev["account"] == account:
            self.liquidation(ev)


def _config_text() -> str:
    """The embedded default plus the demo's two extra leveraged traders."""
    extra = "".join(f'\n[accounts.{name}]\nrole = "trader"\ndeposit = {usd * USD}\n'
                    for name, usd in EXTRA_ACCOUNTS.items())
    return DEFAULT_TOML.read_text() + extra


def run(seconds: float = 45.0, out=sys.stdout, router: str | None = None,
        pub: str | None = None, err=sys.stderr) -> int:
    """Run the demo on `out`, what fails on `err`; 0 when the audit balances. SIGTERM and Ctrl-C
    end it cleanly (128 + the signal's number)."""
    w = out.write
    tmp = Path(tempfile.mkdtemp(prefix="perpdex-demo-"))
    (tmp / "logs").mkdir()
    children = Children(tmp / "logs")
    router = router or f"tcp://127.0.0.1:{free_port()}"
    pub = pub or f"tcp://127.0.0.1:{free_port()}"

    def stop(signum, _frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 1
    ctx = zmq.Context()
    try:
        status = _run(seconds, out, tmp, children, router, pub, ctx)
    except Stopped as e:
        status = 128 + e.signum
        _quiet(previous)
        w(f"\nperpdex demo: stopped by {e}; ")
    except BrokenPipeError:             # the reader went away (`| head`): stop quietly
        _quiet(previous)
        status = 128 + signal.SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())   # what is left goes nowhere
    except ServerFailed as e:
        _quiet(previous)
        err.write(f"perpdex demo: the server did not start: {e}\n--- its output ---\n"
                  f"{children.output('server').rstrip() or '(none)'}\n---\n")
        status = 1
    except Timeout as e:                # the server stopped answering: say what it said
        _quiet(previous)
        server = children.procs[0][1]
        how = (f"it exited with status {server.returncode}" if server.poll() is not None
               else "it is still running")
        out.flush()
        err.write(f"\nperpdex demo: the server stopped answering ({e}; {how})\n"
                  f"--- its output ---\n{children.output('server').rstrip() or '(none)'}\n---\n")
        status = 1
    finally:
        _quiet(previous)
        ctx.destroy(linger=0)
        children.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        for s, h in previous.items():
            signal.signal(s, h)
    if status >= 128:
        w(f"{len(children.procs)} processes stopped, temporary keys removed\n")
    out.flush()
    return status


def _quiet(previous) -> None:
    """While cleaning up, a second Ctrl-C or SIGTERM is ignored rather than interrupting it."""
    for s in previous:
        signal.signal(s, signal.SIG_IGN)


def _run(seconds: float, out, tmp: Path, children: Children, router: str, pub: str,
         ctx) -> int:
    w = out.write
    config = tmp / "perpdex.toml"
    config.write_text(_config_text())
    data = tmp / "data"
    keys = data / "keys"
    server = children.spawn("server", "-m", "perpdex.gateway.cli", "serve", "--config", str(config),
                            "--data", str(data), "--router", router, "--pub", pub)
    deadline = time.monotonic() + 20
    while not (keys / "lev-3.key_secret").exists() or "perpdex serving" not in \
            children.output("server"):
        if server.poll() is not None:
            raise ServerFailed(f"it exited with status {server.returncode}")
        if time.monotonic() > deadline:
            raise ServerFailed("no sign of it within 20 s")
        time.sleep(0.05)
    server_key = str(keys / "server.key")

    def client(name):
        return Client(router, server_key, str(keys / f"{name}.key_secret"), context=ctx)

    admin = client("admin")
    specs = units(admin.request("markets"))
    view = View(out, specs)
    view.mult = {m["market"]: m["multiplier"] for m in admin.request("markets")["markets"]}
    admin.request("deposit", account="insurance", amount=INSURANCE_SEED * USD)
    feeder = Feeder(ctx, router, server_key, str(keys / "oracle.key_secret"))
    index = dict(START)
    md = admin.market_data(pub, list(index), on_update=view.public)     # the book mirrors
    view.books = md.books
    for m, p in index.items():
        feeder.update(m, p)
    watched = {name: client(name) for name in ("lev-1", *EXTRA_ACCOUNTS)}
    for c in watched.values():
        c.subscribe()

    life = f"{seconds + 5:.0f}"
    common = ["--data", str(data), "--router", router]
    mm = ("-m", "perpdex.examples.market_maker")        # examples/, shipped in the wheel
    children.spawn("mm-1", *mm, *common, "--pub", pub, "--account", "mm-1", "--market",
                   "BTC-PERP", "--size", "0.5", "--seconds", life)
    children.spawn("mm-2", *mm, *common, "--pub", pub, "--account", "mm-2", "--market",
                   "ETH-PERP", "--size", "5", "--seconds", life)
    children.spawn("taker-1", "-m", "perpdex.gateway.bots", "taker", *common, "--account", "taker-1",
                   "--seed", "1", "--seconds", life)
    children.spawn("taker-2", "-m", "perpdex.gateway.bots", "taker", *common, "--account", "taker-2",
                   "--seed", "2", "--seconds", life, "--sell-bias", "0.7")
    for name, market, clip in (("lev-1", "BTC-PERP", "0.5"), ("lev-2", "ETH-PERP", "2"),
                               ("lev-3", "ETH-PERP", "10")):
        children.spawn(name, "-m", "perpdex.gateway.bots", "leveraged", *common, "--account", name,
                       "--market", market, "--clip", clip, "--seconds", life)

    w(f"perpdex exchange demo: the server and {len(children.procs) - 1} client processes over "
      f"ZeroMQ (CURVE), {seconds:.0f} s\n"
      f"server: requests {router}, public events {pub}; keys in {tmp} (removed at the end)\n"
      f"the story: 10x longs are built; ETH gaps down {ETH_GAP:.0%} (ADL for the deeper loss, a backstop for the other);\n"
      f"BTC slides {BTC_SLIDE:.0%} (a margin call, liquidations into the book). Prices and "
      f"amounts in USD.\n\n")
    w(f"{'t':>4}  {'BTC index':>10} {'bid':>9} {'ask':>9} {'mark':>9}   "
      f"{'ETH index':>9} {'mark':>8}  {'trades':>6} {'liq.':>5} {'insurance fund':>18}\n")

    rng = random.Random(7)
    t0 = time.monotonic()
    gap_at = None                       # when ETH gapped
    slide_from = slide_to = None
    slide_step = 0.0
    next_print = 0.0
    last_beat = 0.0
    while (now := time.monotonic() - t0) < seconds:
        # Act 2 once the ETH longs are built (a quarter of the run at the earliest, 40 % at
        # the latest); act 3 a little after.
        if gap_at is None and now >= 0.25 * seconds and (
                now >= 0.4 * seconds or _levered(watched, ("lev-2", "lev-3"), view.mult)):
            gap_at = now
            index["ETH-PERP"] = round(index["ETH-PERP"] * (1 - ETH_GAP))
            slide_from = now + 0.1 * seconds
            slide_to = slide_from + 0.25 * seconds
            slide_step = 1 - (1 - BTC_SLIDE) ** (1 / max(1, (slide_to - slide_from) / 0.2))
            view.line(f"      ETH gaps down {ETH_GAP:.0%}: the index falls to "
                      f"{view.price('ETH-PERP', index['ETH-PERP'])} USD")
        sliding = slide_from is not None and slide_from <= now < slide_to
        for m in index:
            if m == "BTC-PERP" and sliding:
                drift = -slide_step
            elif gap_at is not None and m == "ETH-PERP" and now - gap_at < 1.0:
                drift = 0.0             # let the gap play out before the walk goes on
            else:
                drift = rng.gauss(0, 0.0005)
            index[m] = max(1, round(index[m] * (1 + drift)))
            feeder.update(m, index[m])
        stop = time.monotonic() + 0.2
        while time.monotonic() < stop:
            md.poll(20)
            for name, c in watched.items():
                for item in c.drain():
                    view.private(name, item["event"])
        view.flush()
        if time.monotonic() - last_beat > 1.0:       # keep the watching sessions alive
            for c in watched.values():
                c.request("heartbeat")
            last_beat = time.monotonic()
        if now >= next_print:
            next_print += 1.0
            fund = admin.request("audit")["events"][0]["insurance_fund"]
            md.poll(0)
            none = {"index": None, "mark": None, "bid": None, "ask": None}
            b, e = view.quote.get("BTC-PERP", none), view.quote.get("ETH-PERP", none)
            tag = "  <- BTC slides" if sliding else ("  <- ETH gap" if gap_at is not None
                                                      and now - gap_at < 1.5 else "")
            w(f"{now:>4.0f}  {view.price('BTC-PERP', b['index']):>10} "
              f"{view.price('BTC-PERP', b['bid']):>9} {view.price('BTC-PERP', b['ask']):>9} "
              f"{view.price('BTC-PERP', b['mark']):>9}   {view.price('ETH-PERP', e['index']):>9} "
              f"{view.price('ETH-PERP', e['mark']):>8}  {view.counts['trade']:>6} "
              f"{view.counts['liquidation']:>5} {view.usd(fund):>18}{tag}\n")
            out.flush()
    return _summary(out, view, admin)


def _levered(watched: dict, names, mult: dict) -> bool:
    """Have these traders built their positions (a notional of at least 8x their equity)?"""
    for name in names:
        rep = watched[name].request("query_account")["events"][0]
        notional = sum(abs(p["size"]) * (p["entry_price"] or 0) * mult[p["market"]]
                       for p in rep["positions"])
        if rep["equity"] <= 0 or notional < 8 * rep["equity"]:
            return False
    return True


def _summary(out, view: View, admin: Client) -> int:
    w = out.write
    audit = admin.request("audit")["events"][0]
    lhs = audit["deposits"] - audit["withdrawals"]
    rhs = audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"]
    c = view.counts
    w(f"\n{c['trade']} trades; liquidations: {c['liquidation:book']} into the book, "
      f"{c['liquidation:backstop']} backstop, {c['liquidation:adl']} ADL; "
      f"{c['margin_call']} margin calls; {c['funding']} funding events\n")
    w(f"audit: deposits - withdrawals = {view.usd(lhs)} = collateral "
      f"{view.usd(audit['collateral'])} + unrealised {view.usd(audit['unrealised_pnl'])} + "
      f"insurance {view.usd(audit['insurance_fund'])} + fees {view.usd(audit['fees'])}: "
      f"{'balanced' if lhs == rhs else 'NOT BALANCED'}\n")
    w("open interest: " + ", ".join(
        f"{m} long {view.size(m, oi['long'])} / short {view.size(m, oi['short'])}"
        for m, oi in audit["open_interest"].items()) + "\n")
    return 0 if lhs == rhs else 1

