"""The cost of a mark update with many accounts holding positions.

    python -m bench.liquidation [--accounts 10000 1000000] [--updates 200]

For each size: every account deposits and buys BTC-PERP from one market maker; most at 2x, ten
at 9.5x. Then, after a first mark update that indexes them all (not timed), it times:
  quiet     mark updates of +-1 tick that liquidate nobody (p50 and p99 over `--updates`)
  ten       one mark update 6 % down that liquidates the ten 9.5x accounts into a bid wall
Each is one `oracle` command through Engine.execute_batch, as the gateway would send it; the
time includes the mark, funding's premium sample, trigger orders and the risk pass.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import msgspec

from perpdex.engine import Engine, messages as M

MARKET = "BTC-PERP"
MID = 650_000                     # 65,000.0 USD in ticks of 0.1
USD = 1_000_000
LOTS = 100                        # 0.1 BTC each (6,500 USD)
RISKY = 10

enc = msgspec.msgpack.encode


def build(n_accounts: int) -> tuple[Engine, float]:
    eng = Engine()
    t0 = time.perf_counter()
    setup = [
        M.CreateMarket(market=MARKET, tick_size="0.1", lot_size="0.001", min_qty=1,
                       imf_ppm=100_000, mmf_ppm=50_000, maker_fee_ppm=0, taker_fee_ppm=0,
                       liquidation_fee_ppm=5_000, price_band_ppm=100_000, funding_interval_s=3600,
                       funding_cap_ppm=7500, interest_ppm=0, max_orders_per_account=10,
                       max_liquidations_per_update=1000),
        M.Oracle(market=MARKET, price=MID, ts=1),
        M.Deposit(account="mm", amount=10**18, ts=1),
        M.Deposit(account="insurance", amount=10**12, ts=1),
        M.NewOrder(account="mm", market=MARKET, cid=1, side="sell", kind="limit",
                   qty=LOTS * (n_accounts + 1), price=MID, ts=1),
        # the wall the liquidations sell into: 7 % under the start
        M.NewOrder(account="mm", market=MARKET, cid=2, side="buy", kind="limit",
                   qty=LOTS * 100, price=MID * 93 // 100, ts=1),
    ]
    eng.execute_batch(b"".join(enc(c) for c in setup))
    notional = LOTS * MID * 100                 # 0.1 BTC in quote units (multiplier 100)
    chunk = []
    for i in range(n_accounts):
        deposit = notional * 100 // 950 if i < RISKY else notional // 2     # 9.5x or 2x
        chunk.append(enc(M.Deposit(account=i, amount=deposit, ts=2)))
        chunk.append(enc(M.NewOrder(account=i, market=MARKET, cid=1, side="buy", kind="limit",
                                    qty=LOTS, price=MID, tif="ioc", ts=2)))
        if len(chunk) >= 20_000:
            eng.execute_batch(b"".join(chunk))
            chunk.clear()
    eng.execute_batch(b"".join(chunk))
    seconds = time.perf_counter() - t0
    eng.execute_batch(enc(M.Oracle(market=MARKET, price=MID, ts=3)))     # index them all
    return eng, seconds


def time_update(eng: Engine, price: int, ts: int) -> tuple[float, bytes]:
    data = enc(M.Oracle(market=MARKET, price=price, ts=ts))
    t0 = time.perf_counter_ns()
    out = eng.execute_batch(data)
    return (time.perf_counter_ns() - t0) / 1000, out


def run(n_accounts: int, updates: int = 200) -> dict:
    eng, setup_s = build(n_accounts)
    gc.collect()
    gc.disable()
    try:
        quiet = []
        for k in range(updates):
            us, out = time_update(eng, MID + (1 if k % 2 else -1), 10 + k)
            assert b"liquidation" not in out
            quiet.append(us)
        us, out = time_update(eng, MID * 94 // 100, 10_000)
    finally:
        gc.enable()
    events = msgspec.msgpack.decode(b"\xdd" + len(_frames(out)).to_bytes(4, "big") + out)
    liquidated = {e["account"] for e in events if e["type"] == "liquidation"}
    assert liquidated == set(range(RISKY)), liquidated
    quiet.sort()
    return {"accounts": n_accounts, "setup_s": setup_s,
            "quiet_p50_us": statistics.median(quiet), "quiet_p99_us": quiet[int(0.99 * len(quiet))],
            "ten_us": us, "events_of_ten": len(events)}


def _frames(data: bytes) -> list[int]:
    from perpdex.engine.wire import msgpack_frames
    ends, error = msgpack_frames(data)
    assert error is None
    return ends


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--updates", type=int, default=200)
    a = ap.parse_args(argv)
    print("| accounts with positions | quiet mark update p50 / p99 (us) | mark update "
          "liquidating ten (us) | setup (s) |\n|---:|---:|---:|---:|")
    for n in a.accounts:
        r = run(n, a.updates)
        print(f"| {r['accounts']:,} | {r['quiet_p50_us']:.1f} / {r['quiet_p99_us']:.1f} | "
              f"{r['ten_us']:,.0f} ({r['events_of_ten']} events) | {r['setup_s']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
