"""The sentences of rejections: the `detail` of a `rejected` event, for a person to read.

Rare paths only (a command that is refused), so plain Python strings. Values are shown as the
client wrote them (JSON), so a detail can be matched against the request that caused it.
"""
import msgspec

_json_encode = msgspec.json.encode


def show(v):
    """A value as the client wrote it (JSON), for a detail sentence."""
    if v is None:
        return "nothing"
    try:
        return _json_encode(v).decode()
    except TypeError:
        return repr(v)


def no_market(name):
    return f"no market named {show(name)}"


def bad_qty(v, limit):
    return f"qty must be a positive whole number of lots up to {limit}, got {show(v)}"


def bad_price(field, v, limit):
    return f"{field} must be a positive whole number of ticks up to {limit}, got {show(v)}"


def below_min(qty, min_qty):
    return f"qty {qty} is below the market's min_qty {min_qty}"


def no_order(cid, market):
    return f"no open order with cid {show(cid)} in {market}"
