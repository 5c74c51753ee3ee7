# cython: language_level=3
"""Account commands (contract: "Commands", the money and margin ones): deposit, withdraw,
set_leverage, set_margin_mode and transfer_margin. Each is checked whole before it changes
anything, and answered with a `balance` event or a `rejected` one."""
from .state cimport State

cdef int deposit(State s, object cmd) except -1
cdef int withdraw(State s, object cmd) except -1
cdef int set_leverage(State s, object cmd) except -1
cdef int set_margin_mode(State s, object cmd) except -1
cdef int transfer_margin(State s, object cmd) except -1
