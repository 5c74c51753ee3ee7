"""The log's messages (gateway/replication.py): a loop turn longer than one JetStream message
may hold is cut between whole records, and the records read back from the pieces are the
turn's. No NATS server needed."""
from perpdex.engine import messages as M
from perpdex.gateway import journal as J
from perpdex.gateway import replication as R


def test_a_turn_longer_than_a_message_is_cut_between_whole_records():
    batch = [M.NewOrder(account="a", market="BTC-PERP", cid=i, side="buy", kind="limit", qty=1,
                        price=600_000 + i, ts=i) for i in range(200)]
    data, last, _ = J.turn(41, batch)
    pieces = R.chunks(data, 1000)
    assert len(pieces) > 1 and all(len(p) <= 1000 for _, p in pieces)
    assert b"".join(p for _, p in pieces) == data
    read = [rec for _, p in pieces for rec in R.records(p)]
    assert [seq for seq, _, _ in read] == list(range(42, last + 1))
    assert [seq for seq, _ in pieces] == [list(R.records(p))[-1][0] for _, p in pieces]
    assert pieces[-1][0] == last and read[-1][1] == J.TURN


def test_a_record_longer_than_the_limit_goes_alone():
    data, last, _ = J.turn(0, [M.NewOrder(account="a" * 64, market="BTC-PERP", cid="x" * 64,
                                          side="buy", kind="limit", qty=1, price=1, ts=1)])
    pieces = R.chunks(data, 16)
    assert [seq for seq, _ in pieces] == [1, 2] and b"".join(p for _, p in pieces) == data
