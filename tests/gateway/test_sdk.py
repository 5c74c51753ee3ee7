"""The SDK's front door (docs/sdk.md) against a real `perpdex serve` process, started as a
newcomer starts it (the embedded default: its simulated oracle prices the markets), with a
short session timeout. Nothing here asserts a timing beyond loose hang guards."""
import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from perpdex.gateway.client import (
    Account, AmendOrder, CancelAll, CancelOrder, DuplicateOrderId, Forbidden, InsufficientMargin,
    InvalidOrder, InvalidRequest, Order, OrderNotFound, PerpdexError, PlaceOrder,
    PostOnlyWouldCross, RateLimited, Timeout, Unavailable, UnknownMarket, Units, check, connect,
    connect_async, quote_units, usd)
from perpdex.gateway.natslocal import free_port
from tests.harness import near

ROOT = Path(__file__).resolve().parents[2]
PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"
D = Decimal


# ---- the worked example ----------------------------------------------------------------------

def example_block() -> str:
    text = (ROOT / "docs" / "sdk.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "wait_fills(offer)" in b)


def test_docs_worked_example_is_the_examples_file_and_runs_to_a_first_fill(venue):
    code = example_block()
    example = (ROOT / "examples" / "first_fill.py").read_text()
    assert code == example[example.index("from decimal import"):]   # the page shows the file
    run = subprocess.run([sys.executable, "-c", code], cwd=venue["home"], env=dict(os.environ),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "taker: bought 0.010 at" in out and "maker: sold 0.010 at" in out
    assert "(maker)" in out and "refused by the engine: insufficient_margin" in out


# ---- each method -----------------------------------------------------------------------------

def test_place_buy_sell_cancel_amend_cancel_all_and_the_typed_replies(venue):
    c = connect("mm-2")
    try:
        c.cancel_all()
        bid = near(c, "ETH-PERP", "0.98")
        placed = c.buy("ETH-PERP", "0.50", bid, cid="sdk-b1")
        assert isinstance(placed, Order)
        assert (placed.status, placed.size, placed.price, placed.remaining, placed.filled) == (
            "open", D("0.50"), bid, D("0.50"), 0)
        ask = near(c, "ETH-PERP", "1.02")
        sold = c.place("ETH-PERP", "sell", D("0.25"), ask, post_only=True)
        assert sold.tif == "alo" and isinstance(sold.cid, int)
        amended = c.amend(placed, price=bid - D("0.01"), size="0.40")
        assert (amended.price, amended.size, amended.priority_kept) == (
            bid - D("0.01"), D("0.40"), False)
        opened = {o.cid: o for o in c.open_orders("ETH-PERP")}
        assert opened["sdk-b1"].size == D("0.40") and opened[sold.cid].side == "sell"
        gone = c.cancel("ETH-PERP", "sdk-b1")
        assert (gone.cid, gone.remaining, gone.reason) == ("sdk-b1", D("0.40"), "user")
        rest = c.cancel_all("ETH-PERP")
        assert [x.cid for x in rest] == [sold.cid]
        assert c.open_orders() == []
    finally:
        c.close()


def test_a_market_order_and_an_ioc_report_their_fills_and_what_was_cancelled(venue):
    mm, tk = connect("mm-2"), connect("taker-2")
    try:
        mm.cancel_all()
        ask = near(mm, "ETH-PERP", "1.01")
        mm.sell("ETH-PERP", "0.30", ask, cid="sdk-ask")
        ioc = tk.buy("ETH-PERP", "0.50", ask, tif="ioc")
        assert (ioc.status, ioc.filled, ioc.cancel_reason) == ("cancelled", D("0.30"),
                                                                "ioc_remainder")
        (f,) = ioc.fills
        assert (f.side, f.liquidity, f.price, f.size) == ("buy", "taker", ask, D("0.30"))
        u = tk.markets()["ETH-PERP"]
        notional = u.ticks(ask) * u.lots("0.30") * u.spec["multiplier"]
        assert f.fee == usd(-(-notional * u.spec["taker_fee_ppm"] // 1_000_000))  # rounded up
        mm.sell("ETH-PERP", "0.10", ask, cid="sdk-ask2")
        market = tk.buy("ETH-PERP", "0.10")
        assert market.kind == "market" and market.price is None and market.status == "filled"
        pos = {p.market: p for p in tk.positions()}["ETH-PERP"]
        assert pos.size >= D("0.40") and isinstance(pos.unrealised_pnl, Decimal)
    finally:
        mm.close()
        tk.close()


def test_account_book_markets_mark_and_money_in_usd(venue):
    c = connect("mm-1")
    try:
        acct = c.account()
        assert isinstance(acct, Account) and acct.account == "mm-1"
        assert acct.collateral > D("19000000") and acct.available <= acct.equity
        ms = c.markets()
        assert set(ms) >= {"BTC-PERP", "ETH-PERP"} and ms["BTC-PERP"].tick == D("0.1")
        assert ms["BTC-PERP"].taker_fee == D("0.0005") and ms["BTC-PERP"].max_leverage == 10
        mark = c.mark("BTC-PERP")
        assert D("50000") < mark.mark < D("80000")
        c.cancel_all("ETH-PERP")
        low = near(c, "ETH-PERP", "0.97")
        c.buy("ETH-PERP", "1.00", low, cid="sdk-book")
        book = c.book("ETH-PERP", depth=100)
        assert any(lv.price == low and lv.size >= D("1.00") for lv in book.bids)
        assert book.best_ask is None or book.best_ask.price > book.best_bid.price
        c.cancel("ETH-PERP", "sdk-book")
        before = c.account().collateral
        assert c.withdraw(D("12.345678")) == before - D("12.345678")
    finally:
        c.close()


def test_a_batch_answers_each_action_in_order_with_refusals_in_their_places(venue):
    c = connect("taker-2")
    try:
        c.cancel_all()
        low = near(c, "BTC-PERP", "0.97")
        first = c.buy("BTC-PERP", "0.002", low, cid="sdk-old")
        new, cancelled, amended, missing, everything = c.batch([
            PlaceOrder("BTC-PERP", "buy", "0.003", low - 1, cid="sdk-new"),
            CancelOrder("BTC-PERP", first.cid),
            AmendOrder("BTC-PERP", "sdk-new", size="0.001"),
            CancelOrder("BTC-PERP", "never-placed"),
            CancelAll("ETH-PERP")])
        assert isinstance(new, Order) and new.cid == "sdk-new"
        assert cancelled.cid == "sdk-old" and amended.size == D("0.001")
        assert isinstance(missing, OrderNotFound) and missing.layer == "engine"
        assert everything == []
    finally:
        c.cancel_all()
        c.close()


# ---- one exception hierarchy -----------------------------------------------------------------

def test_engine_rejections_raise_the_hierarchy(venue):
    c = connect("taker-2")
    try:
        price = near(c, "BTC-PERP", "0.98")
        with pytest.raises(InsufficientMargin) as margin:
            c.buy("BTC-PERP", "1000", price)
        assert (margin.value.layer, margin.value.reason, margin.value.request) == (
            "engine", "insufficient_margin", "new_order")
        with pytest.raises(OrderNotFound):
            c.cancel("BTC-PERP", "nope")
        c.buy("BTC-PERP", "0.001", price, cid="dup")
        with pytest.raises(DuplicateOrderId):
            c.buy("BTC-PERP", "0.001", price, cid="dup")
        with pytest.raises(PostOnlyWouldCross):
            c.sell("BTC-PERP", "0.001", price, post_only=True)
        with pytest.raises(InvalidOrder) as band:
            c.buy("BTC-PERP", "0.001", c.markets()["BTC-PERP"].round_price(price * 2))
        assert band.value.reason == "price_out_of_band"
        with pytest.raises(InvalidRequest) as lev:
            c.set_leverage("BTC-PERP", 1000)
        assert lev.value.reason == "invalid_leverage"
        c.cancel_all()
    finally:
        c.close()


def test_gateway_refusals_raise_the_same_hierarchy(venue):
    c = connect("taker-2")
    try:
        with pytest.raises(InvalidOrder) as bad:          # the gateway's decoder refuses it
            c.buy("BTC-PERP", "0.001", near(c, "BTC-PERP", "0.98"), stp="bogus")
        assert (bad.value.layer, bad.value.reason) == ("gateway", "invalid_command")
        with pytest.raises(Forbidden) as forbidden:
            check(c.request("oracle", market="BTC-PERP", price=1), "oracle")
        assert forbidden.value.layer == "gateway"
        with pytest.raises(UnknownMarket):
            c.buy("NOPE-PERP", "1", "1")
        with pytest.raises(InvalidOrder, match="not a multiple of 0.1"):   # the client's own
            c.buy("BTC-PERP", "0.001", "65000.05")
        assert issubclass(Timeout, Unavailable) and issubclass(RateLimited, PerpdexError)
    finally:
        c.close()


def test_rate_limited_says_when_to_retry_in_the_units_it_gives(venue):
    c = connect("lev-1")
    try:
        limited = None
        for k in range(12):
            try:
                c.batch([PlaceOrder("BTC-PERP", "buy", "0.001", "1", cid=f"rl-{k}-{i}")
                         for i in range(256)])
            except RateLimited as e:
                limited = e
                break
        assert limited is not None and limited.layer == "gateway"
        assert limited.retry_after_ms >= 1 and limited.retry_after == limited.retry_after_ms / 1000
        assert f"retry after {limited.retry_after_ms} ms" in str(limited)
        assert "retry in 0 ms" not in str(limited)
    finally:
        time.sleep(1)
        c.cancel_all()
        c.close()


# ---- sessions and heartbeats -----------------------------------------------------------------

def test_heartbeats_keep_a_cancel_on_disconnect_session_alive_across_a_long_pause(venue):
    c = connect("mm-1", cancel_on_disconnect=True)
    watcher = connect("mm-1")
    try:
        assert c.session_info.session_timeout_ms == 800
        order = c.buy("ETH-PERP", "0.01", near(c, "ETH-PERP", "0.96"), cid="sdk-hb")
        time.sleep(3.0)                    # a strategy step far beyond the session timeout
        assert c.heartbeats > 0
        assert "sdk-hb" in [o.cid for o in watcher.open_orders()]
        c.cancel(order)
        again = c.buy("ETH-PERP", "0.01", order.price, cid="sdk-hb2")
        c.close()                          # the client is gone: its session ends
        deadline = time.monotonic() + 10
        while "sdk-hb2" in [o.cid for o in watcher.open_orders()]:
            assert time.monotonic() < deadline, "cancel-on-disconnect never ran"
            time.sleep(0.1)
        assert again.cid == "sdk-hb2"
    finally:
        watcher.close()


# ---- fills awaited without a race ------------------------------------------------------------

def test_the_makers_fill_is_awaited_right_after_the_takers_reply(venue):
    maker, taker = connect("mm-2"), connect("taker-1")
    try:
        maker.cancel_all()
        for k in range(15):
            price = near(maker, "ETH-PERP", "1.01")
            offer = maker.sell("ETH-PERP", "0.02", price, cid=f"race-{k}")
            taken = taker.buy("ETH-PERP", "0.02", price, tif="ioc")
            assert taken.status == "filled"
            (fill,) = maker.wait_fills(offer, timeout=10)    # at once, after the reply
            assert (fill.cid, fill.side, fill.liquidity, fill.size) == (
                f"race-{k}", "sell", "maker", D("0.02"))
            assert fill.trade_id == taken.fills[0].trade_id
            assert maker.wait_fills("ETH-PERP", f"race-{k}", size="0.02")[0] == fill
        kinds = [type(e).__name__ for e in maker.events()]
        assert kinds.count("Fill") == 15
    finally:
        maker.close()
        taker.close()


def test_the_async_client_does_the_same_awaited(venue):
    async def run():
        maker = await connect_async("mm-2", cancel_on_disconnect=True)
        taker = await connect_async("taker-1")
        try:
            mark = await maker.mark("ETH-PERP")
            price = (await maker.markets())["ETH-PERP"].round_price(mark.mark * D("1.01"))
            offer = await maker.sell("ETH-PERP", "0.03", price)
            taken = await taker.buy("ETH-PERP", "0.03", price, tif="ioc")
            fills = await maker.wait_fills(offer, timeout=10)
            with pytest.raises(OrderNotFound):
                await maker.cancel(offer)
            rest = await maker.buy("ETH-PERP", "0.01", price * D("0.97") // D("0.01")
                                   * D("0.01"), cid="async-rest")
            await asyncio.sleep(2.5)                     # heartbeats from the task keep the
            acct = await maker.account()                 # cancel-on-disconnect session
            assert "async-rest" in [o.cid for o in acct.open_orders]
            await maker.cancel(rest)
            seen = [e async for e in maker.events(timeout=0.5)]
            return taken, fills, acct, seen, maker.heartbeats
        finally:
            maker.close()
            taker.close()

    taken, fills, acct, seen, beats = asyncio.run(run())
    assert taken.status == "filled" and fills[0].liquidity == "maker" and fills[0].size == D("0.03")
    assert acct.account == "mm-2" and beats > 0
    assert any(type(e).__name__ == "Fill" for e in seen)


def test_every_reason_code_of_the_contract_and_the_protocol_has_its_class():
    """Each reason of docs/contract.md's rejections and docs/protocol.md's refusals raises a
    class of its own below PerpdexError; one the SDK does not know yet is PerpdexError itself."""
    from perpdex.gateway.client import REASONS, MarketClosed, error_for
    contract, protocol = ((ROOT / "docs" / n).read_text() for n in ("contract.md",
                                                                      "protocol.md"))
    tables = (contract[contract.index("### Rejections"):contract.index("### Cancel reasons")]
              + protocol[protocol.index("## Replies"):protocol.index("## req_id")])
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", tables, re.M))
    assert {"insufficient_margin", "rate_limited", "unavailable", "market_halted"} <= codes
    assert codes <= set(REASONS)
    assert all(type(error_for(code)) is not PerpdexError for code in codes)
    assert isinstance(error_for("market_halted", request="new_order"), MarketClosed)
    assert type(error_for("something_new")) is PerpdexError


def test_every_name_the_reference_page_gives_is_where_it_says():
    """The classes and functions of docs/sdk.md import from perpdex.gateway.client (the feed's
    mirrors from perpdex.gateway.mirror), whichever room of the SDK writes them; the methods
    it names are the clients' (or an Account's)."""
    import builtins
    import perpdex.gateway.client as sdk
    import perpdex.gateway.mirror as mirror
    text = (ROOT / "docs" / "sdk.md").read_text()
    classes = set(re.findall(r"`([A-Z][A-Za-z]+)`", text)) | set(re.findall(r"[├└]── (\w+)",
                                                                              text))
    calls = set(re.findall(r"`([a-z_]+)\(", text))
    assert {"Client", "AsyncClient", "Chain", "REASONS", "connect", "place"} <= classes | calls
    wrong = [n for n in classes if not any(hasattr(m, n) for m in (sdk, mirror, builtins))
             and n != "Decimal"]
    wrong += [n for n in calls if not any(hasattr(m, n) for m in (sdk, sdk.Client,
                                                                   sdk.Account))]
    assert not wrong, wrong
    assert all(hasattr(sdk.AsyncClient, n) for n in calls if hasattr(sdk.Front, "g_" + n))


def test_money_converts_exactly_both_ways():
    assert usd(1) == D("0.000001") and usd(-2_500_000) == D("-2.5") and usd(None) is None
    assert quote_units("12.345678") == 12_345_678 and quote_units(D("-1")) == -1_000_000
    with pytest.raises(InvalidRequest):
        quote_units("0.0000001")
    btc = Units({"market": "BTC-PERP", "tick_size": "0.1", "lot_size": "0.001"})
    assert btc.money(5) == D("0.000005") and btc.quote("1.5") == 1_500_000
    assert btc.round_price("65000.19") == D("65000.1")
    assert btc.round_price("65000.11", up=True) == D("65000.2")
    assert btc.round_size(0.0015) == D("0.001") and btc.lots(0.1) == 100
    with pytest.raises(ValueError):
        btc.lots("0.0005")


def test_failover_to_the_node_that_answers_then_trades_and_awaits_fills(venue):
    """A list of endpoints whose first has nobody behind it: the front door fails over to the
    next node as request() does, and everything works there."""
    nodes = [f"tcp://127.0.0.1:{free_port()}", venue["PERPDEX_ROUTER"]]
    maker = connect("mm-2", router=nodes, timeout_ms=300, failover_ms=20_000)
    taker = connect("taker-1")
    try:
        assert maker.failovers >= 1 and maker.endpoints[maker.at] == venue["PERPDEX_ROUTER"]
        price = near(maker, "ETH-PERP", "1.01")
        offer = maker.sell("ETH-PERP", "0.01", price, cid="fo-1")
        taker.buy("ETH-PERP", "0.01", price, tif="ioc")
        assert maker.wait_fills(offer, timeout=10)[0].size == D("0.01")
    finally:
        maker.close()
        taker.close()


def test_a_good_till_date_order_is_placed_with_its_expiry_and_refused_without_one(venue):
    c = connect("mm-2")
    try:
        bid = near(c, "ETH-PERP", "0.97")
        far = time.time_ns() + 3600 * 10**9          # the venue's clock is the server's
        placed = c.buy("ETH-PERP", "0.10", bid, tif="gtd", expire_ts=far, cid="sdk-gtd")
        assert (placed.status, placed.tif) == ("open", "gtd")
        with pytest.raises(InvalidOrder) as refused:
            c.buy("ETH-PERP", "0.10", bid, tif="gtd", cid="sdk-gtd2")
        assert refused.value.reason == "invalid_expiry"
        c.cancel("ETH-PERP", "sdk-gtd")
    finally:
        c.close()
