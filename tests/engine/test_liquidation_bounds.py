"""A mark update's work is bounded (the contract: "one crash cannot stall the engine";
docs/limits.md, "Bounded work"), tested on counts of work (Engine.work), not time:

- the ADL queue of a market is ranked once a pass, whatever the number of bankrupt scopes;
- scopes waiting for liquidation are queued once, at the pass that found them, and each later
  clock tick looks at no more than `max_liquidations_per_update` of them;
- a snapshot taken while they wait resumes them in the same order."""
from bench.liquidation_worst import venue
from perpdex.engine import Engine, messages as M

def liquidated(events):
    """The accounts liquidated into the book, each once, in order."""
    return list(dict.fromkeys(e.account for e in events
                              if type(e) is M.LiquidationEvent and e.kind == "book"))


def test_the_adl_queue_is_ranked_once_a_pass_whatever_the_number_of_bankrupt_scopes():
    eng = venue(longs=50, shorts=1_000, long_lots=200, short_lots=10, long_usd=100)
    before = eng.work()["adl_ranked"]
    events = eng.execute(M.Oracle(market="X", price=40_000))     # every long is bankrupt
    adl = [e for e in events if type(e) is M.LiquidationEvent and e.kind == "adl"]
    assert len({e.account for e in adl if e.account != "mm"} & set(range(50))) == 50
    assert eng.work()["adl_ranked"] - before == 1_000               # not 50 x 1,000


def test_scopes_waiting_for_liquidation_are_not_looked_at_again_on_every_tick():
    eng = venue(longs=1_000, shorts=1, long_lots=100, short_lots=100_000, long_usd=20,
                bid=82_000, bound=10)
    events = eng.execute(M.Oracle(market="X", price=83_000))
    assert len(liquidated(events)) == 10
    order = liquidated(events)
    for tick in range(1, 100):
        before = eng.work()["scopes_looked_at"]
        events = eng.execute(M.Clock(ts=tick))
        assert eng.work()["scopes_looked_at"] - before <= 10
        assert len(liquidated(events)) == 10
        order += liquidated(events)
    assert len(set(order)) == 1_000
    assert order == sorted(order, key=lambda a: a)   # equal ratios: by account


def test_a_snapshot_taken_while_liquidations_wait_resumes_them_in_the_same_order():
    eng = venue(longs=200, shorts=1, long_lots=100, short_lots=20_000, long_usd=20,
                bid=82_000, bound=7)
    eng.execute(M.Oracle(market="X", price=83_000))
    copy = Engine.from_snapshot(eng.snapshot())
    for tick in range(1, 40):
        assert copy.execute(M.Clock(ts=tick)) == eng.execute(M.Clock(ts=tick))
    assert copy.state() == eng.state()
