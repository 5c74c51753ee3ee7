"""A cross account liquidated out of two positions must not end below zero equity (the contract:
"No account is left with negative equity that nobody pays for").

Found by the hypothesis flow in test_liquidation.py (shrunk by hand to these 16 commands).
Account 3 is short 2 lots of ETH-PERP and short 2 of BTC-PERP; both marks rise. The ETH position
goes to the insurance fund (backstop) at a bankruptcy price computed from the whole cross equity,
which leaves the scope at zero equity while the BTC position is still open; the BTC position then
closes into the book with a taker fee of 901 quote units, and the account ends at -703.

Fixed: a liquidation's own fills pay no taker fee, and what negative equity is left with no
position is paid by the insurance fund (docs/contract.md, "Liquidation").
"""
import msgspec
import pytest

from perpdex.engine import Engine, messages as M

FLOW = [
    '{"type":"create_market","market":"BTC-PERP","tick_size":"0.1","lot_size":"0.001","min_qty":2,"imf_ppm":100000,"mmf_ppm":50000,"maker_fee_ppm":-150,"taker_fee_ppm":450,"liquidation_fee_ppm":10000,"price_band_ppm":20000,"funding_interval_s":3600,"funding_cap_ppm":7500,"interest_ppm":-300,"tiers":null,"oracle_max_age_s":0,"max_orders_per_account":1000,"max_liquidations_per_update":100,"ts":0}',
    '{"type":"create_market","market":"ETH-PERP","tick_size":"0.1","lot_size":"0.001","min_qty":2,"imf_ppm":100000,"mmf_ppm":50000,"maker_fee_ppm":-150,"taker_fee_ppm":450,"liquidation_fee_ppm":10000,"price_band_ppm":20000,"funding_interval_s":3600,"funding_cap_ppm":7500,"interest_ppm":-300,"tiers":null,"oracle_max_age_s":0,"max_orders_per_account":1000,"max_liquidations_per_update":100,"ts":0}',
    '{"type":"deposit","account":"a","amount":1000000,"ts":0}',
    '{"type":"deposit","account":"b","amount":100000000,"ts":0}',
    '{"type":"deposit","account":3,"amount":1000000,"ts":0}',
    '{"type":"oracle","market":"BTC-PERP","price":10000,"ts":1}',
    '{"type":"oracle","market":"ETH-PERP","price":10000,"ts":1}',
    '{"type":"new_order","account":"a","market":"BTC-PERP","cid":"x","side":"buy","kind":"limit","qty":9,"price":10001,"trigger_price":null,"tif":"gtc","reduce_only":false,"stp":"cancel_maker","ts":25}',
    '{"type":"new_order","account":3,"market":"BTC-PERP","cid":2,"side":"sell","kind":"take_profit_limit","qty":2,"price":9995,"trigger_price":9994,"tif":"gtc","reduce_only":false,"stp":"cancel_taker","ts":26}',
    '{"type":"new_order","account":3,"market":"ETH-PERP","cid":1,"side":"sell","kind":"limit","qty":2,"price":9996,"trigger_price":null,"tif":"gtc","reduce_only":false,"stp":"cancel_taker","ts":27}',
    '{"type":"new_order","account":"b","market":"ETH-PERP","cid":"é-ñ","side":"buy","kind":"limit","qty":12,"price":10012,"trigger_price":null,"tif":"ioc","reduce_only":false,"stp":"cancel_maker","ts":28}',
    '{"type":"new_order","account":"b","market":"BTC-PERP","cid":1,"side":"sell","kind":"stop_limit","qty":25,"price":9999,"trigger_price":9990,"tif":"gtc","reduce_only":false,"stp":"cancel_maker","ts":29}',
    '{"type":"amend","account":"b","market":"BTC-PERP","cid":1,"price":10005,"qty":null,"ts":30}',
    '{"type":"oracle","market":"BTC-PERP","price":7000,"ts":1000000000000000}',
    '{"type":"oracle","market":"BTC-PERP","price":14000,"ts":1000000000000000}',
    '{"type":"oracle","market":"ETH-PERP","price":14000,"ts":1000000000000000}',
]


def test_a_cross_account_liquidated_out_of_two_positions_ends_at_or_above_zero_equity():
    eng = Engine()
    dec = msgspec.json.Decoder(M.AnyCommand)
    for line in FLOW:
        eng.execute(dec.decode(line))
    audit = eng.execute(M.Audit())[0]
    assert audit.deposits - audit.withdrawals == (audit.collateral + audit.unrealised_pnl
                                                  + audit.insurance_fund + audit.fees)
    assert eng.execute(M.QueryAccount(account=3))[0].equity >= 0
