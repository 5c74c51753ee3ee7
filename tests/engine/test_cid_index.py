"""The cid index (engine.book's open-addressed table of (account, cid) -> order) finds every
open order and nothing else through heavy churn: removals move entries back rather than leave
tombstones, and the table grows from the tags alone. Checked against a dict, through the
handle calls, with the engine's integrity check."""
import random

from perpdex.engine import Engine, messages as M
from tests.markets import venue


def test_places_and_cancels_at_random_agree_with_a_dict():
    eng = venue(max_orders_per_account=100_000, price_band_ppm=900_000)
    rng = random.Random(5)
    accts = []
    for k in range(20):
        eng.execute(M.Deposit(account=f"u{k}", amount=10**15))
        accts.append(eng.account_handle(f"u{k}"))
    m = eng.market_handle("X")
    open_ = {}
    for step in range(30_000):
        a, cid = rng.choice(accts), rng.randrange(1, 1_500)
        if rng.random() < 0.55:
            side = rng.randrange(2)
            price = 90_000 - rng.randrange(100) if side == 0 else 110_000 + rng.randrange(100)
            oid, fills = eng.place(a, m, cid, side, 1, price)
            assert fills == ()
            if (a, cid) in open_:
                assert (oid, eng.last_reason) == (0, "duplicate_cid")
            else:
                assert oid and eng.last_reason is None
                open_[(a, cid)] = oid
        else:
            assert eng.cancel_order(a, m, cid) is ((a, cid) in open_)
            open_.pop((a, cid), None)
        if step % 10_000 == 0:
            eng.check_integrity()
    eng.check_integrity()
    copy = Engine.from_snapshot(eng.snapshot())
    for (a, cid) in list(open_)[:2_000]:
        assert copy.cancel_order(a, m, cid) is True
        assert copy.cancel_order(a, m, cid) is False
    copy.check_integrity()
