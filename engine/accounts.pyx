# cython: language_level=3
"""Account commands (see accounts.pxd)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, py128
from .state cimport State, PosC, account, position, touch, scope_of
from .margin cimport equity, initial_margin
from .ledger cimport deposit_cash, withdraw_cash, move_margin
from . cimport events

from .details import no_market
from .markets import MAX_MONEY
from .messages import Reason

cdef int64_t C_MAX_MONEY = MAX_MONEY


cdef int deposit(State s, object cmd) except -1:
    cdef int32_t a = s.account_ids.get(cmd.account, -1)
    if not 0 < cmd.amount <= C_MAX_MONEY:
        return events.reject(s, "deposit", Reason.INVALID_AMOUNT,
                             f"amount must be a positive number of quote units up to "
                             f"{C_MAX_MONEY}, got {cmd.amount}", cmd.account)
    if s.deposits + cmd.amount > C_MAX_MONEY or (a >= 0 and
                                                 s.ac[a].collateral + cmd.amount > C_MAX_MONEY):
        return events.reject(s, "deposit", Reason.INVALID_AMOUNT,
                             f"a deposit of {cmd.amount} would take "
                             + ("the venue's total deposits" if s.deposits + cmd.amount
                                > C_MAX_MONEY else "the account's balance")
                             + f" past the largest amount, {C_MAX_MONEY} quote units", cmd.account)
    a = account(s, cmd.account)
    deposit_cash(s, a, cmd.amount)
    return events.balance(s, a, "deposit")


cdef int withdraw(State s, object cmd) except -1:
    cdef int32_t a = s.account_ids.get(cmd.account, -1)
    cdef int64_t amount
    cdef int128 im, eq
    if not 0 < cmd.amount <= C_MAX_MONEY:
        return events.reject(s, "withdraw", Reason.INVALID_AMOUNT,
                             f"amount must be a positive number of quote units up to "
                             f"{C_MAX_MONEY}, got {cmd.amount}", cmd.account)
    amount = cmd.amount
    if a < 0 or a == s.insurance:
        return events.reject(s, "withdraw", Reason.INSUFFICIENT_COLLATERAL,
                             "no collateral to withdraw" if a < 0 else
                             "the insurance fund cannot be withdrawn", cmd.account)
    im = initial_margin(s, a, -1, -1, 0, 0, 0)
    eq = equity(s, a, -1)
    if amount > s.ac[a].collateral or eq - amount < im:
        return events.reject(s, "withdraw", Reason.INSUFFICIENT_COLLATERAL,
                             f"withdrawing {amount} would leave equity {py128(eq - amount)} "
                             f"against an initial margin of {py128(im)} (collateral "
                             f"{s.ac[a].collateral})",
                             cmd.account)
    withdraw_cash(s, a, amount)
    return events.balance(s, a, "withdraw")


cdef int set_leverage(State s, object cmd) except -1:
    cdef int32_t m = s.market_ids.get(cmd.market, -1), a, p, iso
    cdef int32_t old
    cdef int128 im
    if m < 0:
        return events.reject(s, "set_leverage", Reason.UNKNOWN_MARKET, no_market(cmd.market),
                             cmd.account, cmd.market)
    if not 1 <= cmd.leverage <= s.mk[m].max_leverage:
        return events.reject(s, "set_leverage", Reason.INVALID_LEVERAGE,
                             f"leverage must be between 1 and {s.mk[m].max_leverage} in "
                             f"{cmd.market}, got {cmd.leverage}", cmd.account, cmd.market)
    a = account(s, cmd.account)
    p = position(s, m, a)
    old = s.pos[p].leverage
    s.pos[p].leverage = cmd.leverage
    if s.margin and s.mk[m].has_mark:
        iso = scope_of(s, p)
        im = initial_margin(s, a, iso, -1, 0, 0, 0)
        if cmd.leverage < old or old == 0:
            if im > equity(s, a, iso) and (s.pos[p].size or s.pos[p].open_buy
                                           or s.pos[p].open_sell):
                s.pos[p].leverage = old
                return events.reject(s, "set_leverage", Reason.INSUFFICIENT_MARGIN,
                                     f"at {cmd.leverage}x the initial margin would be "
                                     f"{py128(im)}, above the equity of "
                                     f"{py128(equity(s, a, iso))}",
                                     cmd.account, cmd.market)
    return 0


cdef int set_margin_mode(State s, object cmd) except -1:
    cdef int32_t m = s.market_ids.get(cmd.market, -1), a, p
    cdef bint want = cmd.mode == "isolated"
    cdef PosC* q
    if m < 0:
        return events.reject(s, "set_margin_mode", Reason.UNKNOWN_MARKET, no_market(cmd.market),
                             cmd.account, cmd.market)
    a = account(s, cmd.account)
    p = position(s, m, a)
    q = &s.pos[p]
    if q.isolated == want:
        return 0
    if q.size or q.n_orders:
        return events.reject(s, "set_margin_mode", Reason.MARGIN_MODE_LOCKED,
                             f"the margin mode of {cmd.market} can change only with no position "
                             f"and no open orders there (position {q.size} lots, "
                             f"{q.n_orders} open orders)", cmd.account, cmd.market)
    q.isolated = want
    touch(s, a)
    if not want and q.iso_margin:        # back to cross: the position's margin comes home
        move_margin(s, q, -q.iso_margin)
        return events.balance(s, a, "transfer_margin")
    return 0


cdef int transfer_margin(State s, object cmd) except -1:
    cdef int32_t m = s.market_ids.get(cmd.market, -1), a, p
    cdef int64_t amount
    cdef int128 eq, im
    cdef PosC* q
    if m < 0:
        return events.reject(s, "transfer_margin", Reason.UNKNOWN_MARKET, no_market(cmd.market),
                             cmd.account, cmd.market)
    a = s.account_ids.get(cmd.account, -1)
    p = s.pos_of[m][a] if a >= 0 else -1
    if p < 0 or not s.pos[p].isolated:
        return events.reject(s, "transfer_margin", Reason.NOT_ISOLATED,
                             f"{cmd.market} is not in isolated mode for this account "
                             f"(set_margin_mode first)", cmd.account, cmd.market)
    if cmd.amount == 0 or not -C_MAX_MONEY <= cmd.amount <= C_MAX_MONEY:
        return events.reject(s, "transfer_margin", Reason.INVALID_AMOUNT,
                             f"amount must be a non-zero number of quote units between "
                             f"-{C_MAX_MONEY} and {C_MAX_MONEY} (positive moves collateral in, "
                             f"negative out), got {cmd.amount}", cmd.account, cmd.market)
    amount = cmd.amount
    q = &s.pos[p]
    if amount > 0:
        eq = equity(s, a, -1)
        im = initial_margin(s, a, -1, -1, 0, 0, 0)
        if amount > s.ac[a].collateral or eq - amount < im:
            return events.reject(s, "transfer_margin", Reason.INSUFFICIENT_COLLATERAL,
                                 f"moving {amount} in would leave the cross equity "
                                 f"{py128(eq - amount)} against an initial margin of {py128(im)} "
                                 f"(collateral "
                                 f"{s.ac[a].collateral})", cmd.account, cmd.market)
    else:
        eq = equity(s, a, p)
        im = initial_margin(s, a, p, -1, 0, 0, 0)
        if -amount > q.iso_margin or eq + amount < im:
            return events.reject(s, "transfer_margin", Reason.INSUFFICIENT_COLLATERAL,
                                 f"moving {-amount} out would leave the position's equity "
                                 f"{py128(eq + amount)} against an initial margin of {py128(im)} "
                                 f"(isolated "
                                 f"margin {q.iso_margin})", cmd.account, cmd.market)
    move_margin(s, q, amount)
    return events.balance(s, a, "transfer_margin")
