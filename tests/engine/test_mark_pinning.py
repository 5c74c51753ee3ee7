"""A mark two orders cannot pin (docs/contract.md, "A mark two orders cannot pin", an
extension): with `mark_ema_updates` N, a bid and an ask held 5 % above the index move the mark
by at most 1/N of that an oracle, where the contract's mark goes all the way."""
from perpdex.engine import Engine, messages as M

PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=50_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=0)
INDEX = 100_000


def pinned(**over):
    """A market where one account holds a bid at +4.9 % and an ask at +5 % of the index; the
    marks of ten oracles at the same index."""
    eng = Engine()
    eng.execute(M.CreateMarket(market="X", **dict(PLAIN, **over)))
    eng.execute(M.Oracle(market="X", price=INDEX))
    eng.execute(M.Deposit(account="attacker", amount=10**12))
    eng.execute(M.NewOrder(account="attacker", market="X", cid=1, side="buy", kind="limit",
                           qty=1, price=104_900))
    eng.execute(M.NewOrder(account="attacker", market="X", cid=2, side="sell", kind="limit",
                           qty=1, price=105_000))
    return [[e.mark for e in eng.execute(M.Oracle(market="X", price=INDEX, ts=k))
             if type(e) is M.Mark][0] for k in range(1, 11)]


def test_two_orders_pin_the_contracts_mark_at_the_band():
    assert pinned() == [104_900] * 10


def test_the_basis_average_mark_moves_at_most_one_nth_of_the_pin_an_oracle():
    marks = pinned(mark_ema_updates=30)
    distance = 104_950 - INDEX                                 # the mid the pair holds
    for k, mark in enumerate(marks, start=1):
        bound = distance * (1 - (29 / 30) ** k)
        assert INDEX <= mark <= INDEX + bound + 1, (k, mark, bound)
    assert marks[0] - INDEX <= distance // 30 + 1              # 165 ticks, not 4,900


def test_the_basis_average_mark_follows_a_real_move_of_the_index_at_once():
    eng = Engine()
    eng.execute(M.CreateMarket(market="X", mark_ema_updates=30, **PLAIN))
    [mark] = eng.execute(M.Oracle(market="X", price=INDEX))
    [mark2] = eng.execute(M.Oracle(market="X", price=90_000))
    assert (mark.mark, mark2.mark) == (INDEX, 90_000)


def test_a_window_out_of_range_is_refused():
    [ev] = Engine().execute(M.CreateMarket(market="X", mark_ema_updates=-1, **PLAIN))
    assert ev.reason == "invalid_market"
