# cython: language_level=3
"""Trigger orders (contract: "Orders and matching", the trigger kinds): stops and take-profits
resting off-book, per market, until the mark reaches them.

A buy stop (and a sell take-profit) fires at mark >= trigger, a sell stop (and a buy
take-profit) at mark <= trigger; what fires enters in placement order (engine.entry).
"""
from libc.stdint cimport int32_t

from .state cimport State

cdef int arm(State s, int32_t i) except -1            # O(log n)
cdef int disarm(State s, int32_t i) except -1         # O(log n)
cdef list due(State s, int32_t m)                     # O(fired * log n)
