"""docs/sdk.md's worked example: from a fresh `perpdex serve` to a first fill.

A maker rests a sell a little above the mark, a taker buys it, and the maker awaits its own
fill; then an order too large for the taker's margin is refused with InsufficientMargin.
Run it beside `perpdex serve` (in the folder where the server keeps perpdex-data).
"""
from decimal import Decimal

from perpdex.gateway.client import InsufficientMargin, connect

maker = connect("mm-1", cancel_on_disconnect=True)    # its orders go if it goes silent
taker = connect("taker-1")

btc = maker.markets()["BTC-PERP"]
mark = maker.mark("BTC-PERP")                          # from the public feed
price = btc.round_price(mark.mark * Decimal("1.001"), up=True)
print(f"BTC-PERP mark {mark.mark}; the maker offers 0.010 at {price}")

maker.cancel_all("BTC-PERP")
offer = maker.sell("BTC-PERP", Decimal("0.010"), price)
print(f"maker: order {offer.cid} is {offer.status}")

bought = taker.buy("BTC-PERP", Decimal("0.010"), price, tif="ioc")
for fill in bought.fills:                              # a taker's fills are in its reply
    print(f"taker: bought {fill.size} at {fill.price}, fee {fill.fee} USD")

for fill in maker.wait_fills(offer):                   # the maker's come on its stream
    print(f"maker: sold {fill.size} at {fill.price}, fee {fill.fee} USD ({fill.liquidity})")

try:
    taker.buy("BTC-PERP", Decimal("1000"), price)
except InsufficientMargin as refused:
    print(f"taker: refused by the {refused.layer}: {refused.reason}")

account = taker.account()
position = account.position("BTC-PERP")
print(f"taker: {position.size} BTC-PERP at {position.entry_price}, "
      f"equity {account.equity} USD, available {account.available} USD")

maker.close()
taker.close()
