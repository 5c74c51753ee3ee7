# cython: language_level=3
"""The ledger (contract: "Margin" and "Funding", the money side): cash, the exact cost basis,
realised PnL, fees, and the lazy settlement of funding.

Every movement of money between accounts, positions, the venue's fee income and the insurance
fund is written here, so that the audit's identity holds by construction: nothing is created or
destroyed, only moved.
"""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, PPM, ceil_div
from .state cimport State, PosC


cdef inline int64_t fee(int64_t price, int64_t qty, int64_t mult, int64_t rate) noexcept nogil:
    """Rounded up: a fee is never short by a unit, and a rebate (rate < 0) never over-paid."""
    return <int64_t>ceil_div(<int128>price * qty * mult * rate, PPM)


cdef int book_trade(State s, PosC* p, int side, int64_t q, int64_t price, int64_t fee) except -1
cdef int settle(State s, PosC* p) except -1
cdef int pay_fund(State s, int32_t a, int32_t iso, int64_t amount) except -1
cdef int deposit_cash(State s, int32_t a, int64_t amount) except -1      # from outside
cdef int withdraw_cash(State s, int32_t a, int64_t amount) except -1     # to outside
cdef int move_margin(State s, PosC* p, int64_t amount) except -1         # cross -> isolated
