"""The batch calls say which of their commands were rejected (Engine.execute_many and
execute_msgpack, `rejected`): what lets `perpdex replay` name each rejection by its line or
object while it applies a whole chunk in one call."""
import msgspec

from perpdex.engine import Engine, messages as M
from perpdex.engine.codec import MsgpackFramer
from tests import flows as F


def flow():
    return F.create_markets(["BTC-PERP"]) + [
        M.Oracle(market="BTC-PERP", price=10_000),
        M.NewOrder(account="a", market="BTC-PERP", cid=1, side="buy", kind="limit", qty=0,
                   price=10_000),                                        # invalid_qty
        M.Deposit(account="a", amount=10**9),
        M.NewOrder(account="a", market="ETH-PERP", cid=1, side="buy", kind="limit", qty=1,
                   price=10_000),                                        # unknown_market
        M.NewOrder(account="a", market="BTC-PERP", cid=2, side="buy", kind="limit", qty=2,
                   price=10_000),
        M.Cancel(account="a", market="BTC-PERP", cid=9),                # unknown_order (fast)
    ]


def test_execute_many_names_the_rejected_commands_by_index():
    rejected = []
    Engine().execute_many(flow(), "msgpack", rejected)
    assert rejected == [2, 4, 6]


def test_execute_msgpack_names_them_on_the_fast_path_too():
    data = b"".join(msgspec.msgpack.encode(c) for c in flow())
    frames, first, offset, bad = MsgpackFramer().split(data)
    rejected = []
    Engine().execute_msgpack(frames, first, offset, "msgpack", rejected)
    assert rejected == [2, 4, 6] and not bad


def test_without_the_list_nothing_is_noted():
    eng = Engine()
    eng.execute_many(flow(), "msgpack")
    rejected = []
    eng.execute_many([M.Cancel(account="a", market="BTC-PERP", cid=5)], "msgpack", rejected)
    assert rejected == [0]


def test_what_the_list_held_before_the_call_stays():
    rejected = ["earlier"]
    Engine().execute_many(flow(), "msgpack", rejected)
    assert rejected == ["earlier", 2, 4, 6]
