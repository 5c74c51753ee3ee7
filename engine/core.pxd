# cython: language_level=3
"""The engine: one State, the rooms wired around it, and the dispatch of commands.

The rooms, leaves first (each imports only rooms above it in this list):
    units       integer types, units, exact division
    book        price levels, FIFO queues, the order pool, the cid index
    wire        the event writer (msgpack / JSON Lines from C fields)
    state       the C arrays of markets, accounts and positions
    events      the only owner of `seq` and of the event buffer
    margin      requirements, tiers, leverage, equity, the checks
    ledger      cash, cost basis, realised PnL, fees, funding settlement
    triggers    stop and take-profit orders waiting for their mark
    matching    the price-time walk (and FOK's dry run of it)
    entry       one admission path; new_order, amend, cancel, cancel_all
    risk        the index of positions near their liquidation line
    funding     premiums, rates, the cumulative index
    liquidation the pass, the book step, the backstop, ADL
    accounts    deposit, withdraw, leverage, margin mode, transfers
    reports     query_account, audit, the state hash, integrity checks
    fastpath    plain msgpack orders and cancels read without Python objects
    core        clock, dispatch, the public API
"""
cimport cython
from libc.stdint cimport int64_t, int32_t

from .state cimport State


@cython.final
cdef class Engine:
    cdef State s
    cdef int64_t _first              # seq before the last per-command call
    cdef public bint record_events   # per-command calls encode their events (last_events)
    cdef bint _recorded              # ... and the last one did

    # ---- cpdef API -------------------------------------------------------------------------
    cpdef list execute(self, object cmd)

    # ---- cdef internals --------------------------------------------------------------------
    cdef inline State _call(self, bint log_fills)
    cdef int _dispatch(self, object cmd) except -1
    cdef int _failed(self, object cmd) except -1
    cdef bytes _run_msgpack(self, data, int64_t first, Py_ssize_t offset, str out,
                            Py_ssize_t* used, int64_t* count)
    cdef int _apply(self, object cmd) except -1
    cdef int _order_command(self, object t, tuple f) except -1
    cdef int _create_market(self, object cmd) except -1
    cdef int _oracle(self, object cmd) except -1
