"""The risk index (engine/risk.pxd): a mark update looks only at the positions whose key it
reached, and the index stays exact however often the keys move (its heaps keep superseded
entries until they are outnumbered, then rebuild from the current ones)."""
from bench.liquidation_worst import USD, venue
from perpdex.engine import messages as M


def test_a_quiet_mark_update_looks_at_nobody():
    eng = venue(longs=300, shorts=300, long_lots=10, short_lots=10, long_usd=1_000)
    before = eng.work()["scopes_looked_at"]
    eng.execute(M.Oracle(market="X", price=100_010))
    assert eng.work()["scopes_looked_at"] == before


def test_keys_moved_thousands_of_times_still_find_exactly_the_liquidatable():
    eng = venue(longs=40, shorts=40, long_lots=10, short_lots=10, long_usd=3)
    ts = peak = 0
    for round_ in range(150):                  # each withdrawal makes every long's key more
        for i in range(40):                    # urgent than it was: a new entry each round
            ts += 1
            eng.execute(M.Withdraw(account=i, amount=USD // 100, ts=ts))
        eng.execute(M.Oracle(market="X", price=100_000 - 10 * (round_ % 7), ts=ts))
        assert eng.risk_violations("X") == []
        work = eng.work()
        assert work["risk_current"] == 80 and work["risk_entries"] <= 2 * 80 + 64 * 2  # 40 + 40
        peak = max(peak, work["risk_entries"])
    events = eng.execute(M.Oracle(market="X", price=72_000, ts=ts + 1))
    gone = {e.account for e in events if type(e) is M.LiquidationEvent}
    assert set(range(40)) <= gone
    assert peak > 80                           # superseded entries were kept, then dropped
    assert eng.risk_violations("X") == []
