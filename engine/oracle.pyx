# cython: language_level=3
"""A multi-source index (see oracle.pxd). Few sources a market: plain Python, O(sources)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport PPM
from .state cimport State, MarketC
from . cimport events

from .messages import Reason, IndexStale


cdef list _fresh(State s, int32_t m):
    """[(price, weight)] of the sources fresh at the clock (all, when oracle_max_age_s is 0)."""
    cdef MarketC* mk = &s.mk[m]
    spec = s.specs[m]
    out = []
    for (name, weight), seen in zip(spec.sources, s.sources[m]):
        if seen is not None and (not mk.oracle_max_age_ns
                                 or s.clock - seen[1] <= mk.oracle_max_age_ns):
            out.append((seen[0], weight))
    return out


cdef object _median(list priced):
    """The weighted median: the lowest price whose cumulative weight reaches half the total
    (prices ascending; equal prices in any order give the same answer)."""
    priced = sorted(priced)
    total = sum(w for _, w in priced)
    run = 0
    for p, w in priced:
        run += w
        if 2 * run >= total:
            return p
    return None


cdef list _sane(State s, int32_t m):
    """The fresh sources within oracle_max_deviation_ppm of the fresh sources' median."""
    fresh = _fresh(s, m)
    dev = s.specs[m].max_deviation_ppm
    if not fresh or not dev:
        return fresh
    med = _median(fresh)
    return [(p, w) for p, w in fresh if abs(p - med) * PPM <= dev * med]


cdef int64_t source_price(State s, int32_t m, object source, int64_t price) except -2:
    """Record `price` from `source` at the clock; the new index, or -1 when the sources left are
    too few (an `index_stale` event then says so, and the index stays). Refuses an unknown source
    (`unknown_source`, -1 with no other event). A market without sources takes no `source`."""
    spec = s.specs[m]
    names = [n for n, _ in spec.sources]
    if not names:
        events.reject(s, "oracle", Reason.UNKNOWN_SOURCE,
                      f"{spec.name} has one index (no oracle_sources): `source` is not taken",
                      None, spec.name)
        return -1
    if source not in names:
        events.reject(s, "oracle", Reason.UNKNOWN_SOURCE,
                      f"{spec.name} takes prices from the sources {', '.join(names)}"
                      + ("" if source is None else f", not {source!r}"), None, spec.name)
        return -1
    s.sources[m][names.index(source)] = (price, s.clock)
    sane = _sane(s, m)
    if len(sane) < spec.min_sources:
        events.report(s, IndexStale, dict(market=spec.name, source=source, sources=len(sane),
                                          needed=spec.min_sources))
        return -1
    return _median(sane)


cdef bint sources_stale(State s, int32_t m) except -1:
    """Are fewer than oracle_min_sources sources fresh and sane at the clock? (Growing
    positions are then refused with `oracle_stale`.)"""
    return len(_sane(s, m)) < s.specs[m].min_sources
