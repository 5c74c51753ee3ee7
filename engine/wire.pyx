# cython: language_level=3
"""Event writer (JSON Lines and msgpack) and msgpack stream framing, in C.

The writer emits exactly what `msgspec` would encode for the same event Struct: the same keys in
the same order, the smallest msgpack integer and string headers, and msgspec's JSON string
escaping. `tests/engine/test_wire.py` holds it to that, byte for byte.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint64_t, int32_t, uint8_t, uint32_t

import msgspec

from . import messages as M

_json_encode = msgspec.json.encode
_mp_encode = msgspec.msgpack.encode

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n) except -1
    PyObject* PyBytes_FromStringAndSize_raw "PyBytes_FromStringAndSize" (const char* s,
                                                                        Py_ssize_t n) except NULL

cdef enum:
    HANDOVER = 1 << 16      # take() hands over a buffer this full whole, instead of copying it

# Same order as `cdef enum Tok` in wire.pxd.
EVENT_TYPES = (
    "order_accepted", "rejected", "fill", "order_cancelled", "order_amended", "mark", "state_hash",
)
KEYS = (
    "account", "market", "cid", "oid", "side", "kind", "price", "qty", "tif", "reduce_only",
    "command", "reason", "detail", "taker_side", "taker_account", "taker_cid", "taker_oid",
    "taker_remaining", "maker_account", "maker_cid", "maker_oid", "maker_remaining", "taker_fee",
    "maker_fee", "liquidation", "remaining", "priority_kept", "index", "mark", "hash",
)
# The string values, from engine.messages (the vocabulary's one source), in the order of the
# V_ tokens: sides, order kinds, times in force, cancel reasons.
VALUES = M.SIDES + M.ORDER_KINDS + M.TIFS + M.CANCEL_REASONS
TOKENS = EVENT_TYPES + KEYS + VALUES
assert len(TOKENS) == N_TOKENS, "wire.pyx TOKENS and wire.pxd Tok disagree"
# Each group of V_ tokens spans what wire.pxd says, so `V_BUY + side`, `V_LIMIT + kind` and
# `V_GTC + tif` name the value whose code (engine/book.pxd) is `side`, `kind`, `tif`.
assert (TOKENS[V_BUY:V_LIMIT], TOKENS[V_LIMIT:V_GTC], TOKENS[V_GTC:V_USER],
        TOKENS[V_USER:]) == (M.SIDES, M.ORDER_KINDS, M.TIFS, M.CANCEL_REASONS), \
    "wire.pxd's value tokens and engine.messages disagree"

cdef Py_ssize_t _FIRST_KEY = K_ACCOUNT
cdef Py_ssize_t _FIRST_VALUE = V_BUY
cdef const char* _HEX = b"0123456789abcdef"


def _padded(b):
    """`b` and zeros up to a multiple of PAD bytes (what the unchecked writes copy)."""
    return b + bytes(-len(b) % PAD)


def _encode_tokens():
    """[fmt][tok] -> bytes. A JSON key carries its separators: `,"market":`."""
    mp, js = [], []
    for i, t in enumerate(TOKENS):
        mp.append(_mp_encode(t))
        if i < _FIRST_KEY:                       # event type: written by begin()
            js.append(b'{"type":' + _json_encode(t))
        elif i < _FIRST_VALUE:
            js.append(b"," + _json_encode(t) + b":")
        else:
            js.append(_json_encode(t))
    return [mp, js]


cdef class EventWriter:
    """A growable byte buffer of encoded events.

    All writes are amortised O(1) in the bytes written. `take()` hands the bytes over and empties
    the buffer; the capacity is kept, so a long replay allocates only while it warms up.
    """

    def __cinit__(self, Py_ssize_t capacity=1 << 16):
        self.cap = capacity if capacity > 64 else 64
        self.store = PyBytes_FromStringAndSize_raw(NULL, self.cap)
        self.buf = PyBytes_AS_STRING(<object>self.store)
        self.length = 0
        self._names = []
        self.names_cap = 64
        self.n_names = 0
        self.name_ptr = <const char**>malloc(self.names_cap * sizeof(char*))
        self.name_len = <Py_ssize_t*>malloc(self.names_cap * sizeof(Py_ssize_t))
        if self.name_ptr == NULL or self.name_len == NULL:
            raise MemoryError()
        tokens = _encode_tokens()
        self._tok_lens = [[len(b) for b in f] for f in tokens]
        self._tok_bytes = [[_padded(b) for b in f] for f in tokens]   # padded: see u_padded
        self.set_format(FMT_MSGPACK)

    def __dealloc__(self):
        if self.store != NULL:
            Py_DECREF(<object>self.store)
        free(self.name_ptr)
        free(self.name_len)

    cpdef void set_format(self, int fmt):
        cdef Py_ssize_t i
        cdef bytes b
        self.fmt = fmt
        for i in range(N_TOKENS):
            b = self._tok_bytes[fmt][i]
            self.tok_ptr[i] = b
            self.tok_len[i] = self._tok_lens[fmt][i]
        for i in range(self.n_names):
            b = self._names[i][fmt]
            self.name_ptr[i] = b
            self.name_len[i] = self._names[i][2 + fmt]

    cpdef int register_name(self, object name) except -1:
        """Encode an account or market name once, in both formats; returns its id."""
        cdef bytes b
        cdef const char** np
        cdef Py_ssize_t* nl
        if self.n_names == self.names_cap:        # the old arrays stay until both have grown
            np = <const char**>realloc(self.name_ptr, 2 * self.names_cap * sizeof(char*))
            if np == NULL:
                raise MemoryError()
            self.name_ptr = np
            nl = <Py_ssize_t*>realloc(self.name_len, 2 * self.names_cap * sizeof(Py_ssize_t))
            if nl == NULL:
                raise MemoryError()
            self.name_len = nl
            self.names_cap *= 2
        mp, js = _mp_encode(name), _json_encode(name)
        entry = (_padded(mp), _padded(js), len(mp), len(js))
        self._names.append(entry)
        b = entry[self.fmt]
        self.name_ptr[self.n_names] = b
        self.name_len[self.n_names] = entry[2 + self.fmt]
        self.n_names += 1
        return <int>(self.n_names - 1)

    cpdef bytes take(self):
        """The bytes written, and an empty buffer. A small output is copied out; a large one
        (HANDOVER bytes or more) is handed over whole, trimmed to its length, and a fresh
        buffer of the same capacity takes its place (no copy of the events)."""
        cdef bytes out
        cdef PyObject* fresh
        if self.length < HANDOVER:
            out = PyBytes_FromStringAndSize(self.buf, self.length)
            self.length = 0
            return out
        fresh = PyBytes_FromStringAndSize_raw(NULL, self.cap)
        try:
            _PyBytes_Resize(&self.store, self.length)   # ours alone: trimmed in place
        except MemoryError:
            self.store = fresh                          # (the old one is gone)
            self.buf = PyBytes_AS_STRING(<object>fresh)
            self.length = 0
            raise
        out = <bytes>self.store
        Py_DECREF(out)                                  # the reference `out` took is ours
        self.store = fresh
        self.buf = PyBytes_AS_STRING(<object>fresh)
        self.length = 0
        return out

    cpdef void clear(self):
        self.length = 0

    @property
    def size(self):
        return self.length

    # ---- low level -------------------------------------------------------------------------

    cdef int reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t want = self.length + n, cap = self.cap
        cdef PyObject* nb
        if want <= cap:
            return 0
        while cap < want:
            cap *= 2
        nb = PyBytes_FromStringAndSize_raw(NULL, cap)   # MemoryError: the buffer is as it was
        memcpy(PyBytes_AS_STRING(<object>nb), self.buf, self.length)
        Py_DECREF(<object>self.store)
        self.store = nb
        self.buf = PyBytes_AS_STRING(<object>nb)
        self.cap = cap
        return 0

    cdef void _raw(self, const char* p, Py_ssize_t n) noexcept:
        memcpy(self.buf + self.length, p, n)
        self.length += n

    cdef void _byte(self, char c) noexcept:
        self.buf[self.length] = c
        self.length += 1

    cdef void _be(self, uint64_t v, int nbytes) noexcept:
        cdef int i
        for i in range(nbytes - 1, -1, -1):
            self.buf[self.length + i] = <char>(v & 0xff)
            v >>= 8
        self.length += nbytes

    # ---- events ----------------------------------------------------------------------------

    cdef int begin(self, int etype, int nfields, int64_t seq, int64_t ts) except -1:
        """Open an event of `nfields` fields besides type, seq and ts."""
        cdef int n = nfields + 3
        self.reserve(EVENT_ROOM)
        if self.fmt == FMT_MSGPACK:
            if n < 16:
                self._byte(<char>(0x80 | n))
            else:
                self._byte(<char>0xde)
                self._be(n, 2)
            self._raw(b"\xa4type", 5)
            u_key(self, etype)
            self._raw(b"\xa3seq", 4)
            u_int64(self, seq)
            self._raw(b"\xa2ts", 3)
            u_int64(self, ts)
        else:
            self._raw(self.tok_ptr[etype], self.tok_len[etype])
            self._raw(b',"seq":', 7)
            self.int64(seq)
            self._raw(b',"ts":', 6)
            self.int64(ts)
        return 0

    cdef int end(self) except -1:
        if self.fmt == FMT_JSON:
            self.reserve(2)
            self._raw(b"}\n", 2)
        return 0

    cdef int key(self, int k) except -1:
        self.reserve(self.tok_len[k])
        self._raw(self.tok_ptr[k], self.tok_len[k])
        return 0

    cdef int tok(self, int t) except -1:
        self.reserve(self.tok_len[t])
        self._raw(self.tok_ptr[t], self.tok_len[t])
        return 0

    cdef int name(self, int32_t name_id) except -1:
        self.reserve(self.name_len[name_id])
        self._raw(self.name_ptr[name_id], self.name_len[name_id])
        return 0

    cdef int int64(self, int64_t v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        cdef uint64_t u
        self.reserve(24)
        if self.fmt == FMT_JSON:
            if v < 0:
                self._byte(b'-')
                u = <uint64_t>0 - <uint64_t>v
            else:
                u = <uint64_t>v
            while True:
                i -= 1
                tmp[i] = <char>(48 + <int>(u % 10))
                u //= 10
                if u == 0:
                    break
            self._raw(tmp + i, 24 - i)
        elif v >= 0:
            if v < 128:
                self._byte(<char>v)
            elif v < 0x100:
                self._byte(<char>0xcc); self._be(v, 1)
            elif v < 0x10000:
                self._byte(<char>0xcd); self._be(v, 2)
            elif v < <int64_t>0x100000000:
                self._byte(<char>0xce); self._be(v, 4)
            else:
                self._byte(<char>0xcf); self._be(v, 8)
        else:
            if v >= -32:
                self._byte(<char>(v & 0xff))
            elif v >= -128:
                self._byte(<char>0xd0); self._be(<uint64_t>v & 0xff, 1)
            elif v >= -32768:
                self._byte(<char>0xd1); self._be(<uint64_t>v & 0xffff, 2)
            elif v >= <int64_t>-2147483648:
                self._byte(<char>0xd2); self._be(<uint64_t>v & 0xffffffff, 4)
            else:
                self._byte(<char>0xd3); self._be(<uint64_t>v, 8)
        return 0

    cdef int boolean(self, bint v) except -1:
        self.reserve(5)
        if self.fmt == FMT_JSON:
            if v:
                self._raw(b"true", 4)
            else:
                self._raw(b"false", 5)
        else:
            self._byte(<char>(0xc3 if v else 0xc2))
        return 0

    cdef int null(self) except -1:
        self.reserve(4)
        if self.fmt == FMT_JSON:
            self._raw(b"null", 4)
        else:
            self._byte(<char>0xc0)
        return 0

    cdef int utf8(self, const char* s, Py_ssize_t n) except -1:
        """A string from UTF-8 bytes, escaped as msgspec escapes it."""
        cdef Py_ssize_t i
        cdef unsigned char c
        if self.fmt == FMT_MSGPACK:
            self.reserve(n + 5)
            if n < 32:
                self._byte(<char>(0xa0 | n))
            elif n < 0x100:
                self._byte(<char>0xd9); self._be(n, 1)
            elif n < 0x10000:
                self._byte(<char>0xda); self._be(n, 2)
            else:
                self._byte(<char>0xdb); self._be(n, 4)
            self._raw(s, n)
            return 0
        self.reserve(6 * n + 2)
        self._byte(b'"')
        for i in range(n):
            c = <unsigned char>s[i]
            if c == 34:
                self._raw(b'\\"', 2)
            elif c == 92:
                self._raw(b"\\\\", 2)
            elif c >= 32:
                self._byte(<char>c)
            elif c == 10:
                self._raw(b"\\n", 2)
            elif c == 13:
                self._raw(b"\\r", 2)
            elif c == 9:
                self._raw(b"\\t", 2)
            elif c == 8:
                self._raw(b"\\b", 2)
            elif c == 12:
                self._raw(b"\\f", 2)
            else:
                self._raw(b"\\u00", 4)
                self._byte(_HEX[c >> 4])
                self._byte(_HEX[c & 15])
        self._byte(b'"')
        return 0

    cdef int pystr(self, str s) except -1:
        cdef bytes b = s.encode("utf-8")
        return self.utf8(b, len(b))

    cdef int pyobj(self, object o) except -1:
        """Any value msgspec can encode (rare events only: rejections, hashes)."""
        cdef bytes b = _mp_encode(o) if self.fmt == FMT_MSGPACK else _json_encode(o)
        self.reserve(len(b))
        self._raw(b, len(b))
        return 0

    cdef int struct_event(self, object ev) except -1:
        """A whole event Struct, encoded by msgspec (rare events: account, audit, balance)."""
        cdef bytes b = _mp_encode(ev) if self.fmt == FMT_MSGPACK else _json_encode(ev) + b"\n"
        self.reserve(len(b))
        self._raw(b, len(b))
        return 0

    cdef int array_header(self, uint32_t n) except -1:
        """A msgpack array32 header (fixed width, so it can be patched in place)."""
        self.reserve(5)
        self._byte(<char>0xdd)
        self._be(n, 4)
        return 0


# ---- msgpack stream framing ----------------------------------------------------------------

cdef Py_ssize_t skip_object(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int depth) except -2:
    """Index just past the msgpack object at `i`; -1 if the data ends inside it.

    Raises ValueError for a byte that starts no msgpack object (0xc1). Iterative, with a count of
    the elements still to skip, so any nesting costs O(bytes) and no recursion (`depth` is
    unused: decoding, not framing, bounds nesting).
    """
    cdef unsigned char c
    cdef uint64_t length, count, pending = 1
    cdef int w, j
    while pending:
        if i >= n:
            return -1
        pending -= 1
        c = p[i]
        i += 1
        length = 0
        count = 0
        w = 0
        if c <= 0x7f or c >= 0xe0 or c == 0xc0 or c == 0xc2 or c == 0xc3:
            continue
        if 0xa0 <= c <= 0xbf:
            length = c & 0x1f
        elif 0x90 <= c <= 0x9f:
            count = c & 0x0f
        elif 0x80 <= c <= 0x8f:
            count = 2 * (c & 0x0f)
        elif c in (0xcc, 0xd0):
            length = 1
        elif c in (0xcd, 0xd1):
            length = 2
        elif c in (0xca, 0xce, 0xd2):
            length = 4
        elif c in (0xcb, 0xcf, 0xd3):
            length = 8
        elif c in (0xd4, 0xd5, 0xd6, 0xd7, 0xd8):           # fixext 1, 2, 4, 8, 16 (+ type byte)
            length = 1 + (1 << (c - 0xd4))
        elif c in (0xc4, 0xd9):
            w = 1
        elif c in (0xc5, 0xda):
            w = 2
        elif c in (0xc6, 0xdb):
            w = 4
        elif c in (0xc7, 0xc8, 0xc9):                       # ext 8, 16, 32 (+ type byte)
            w = 1 << (c - 0xc7)
        elif c in (0xdc, 0xde):
            w = -2
        elif c in (0xdd, 0xdf):
            w = -4
        else:
            raise ValueError(f"byte 0x{c:02x} starts no msgpack object")
        if w != 0:
            if i + (w if w > 0 else -w) > n:
                return -1
            for j in range(w if w > 0 else -w):
                length = (length << 8) | p[i + j]
            i += (w if w > 0 else -w)
            if w < 0:
                count = length * (2 if c in (0xde, 0xdf) else 1)
                length = 0
            elif c in (0xc7, 0xc8, 0xc9):
                length += 1
        if length:
            if <uint64_t>(n - i) < length:
                return -1
            i += <Py_ssize_t>length
        pending += count
    return i


def msgpack_frames(const unsigned char[::1] data not None):
    """Split a stream of concatenated msgpack objects.

    Returns `(ends, error)`: the end offset of each complete object, in order, and None, or the
    offset and a sentence when the data holds a byte that starts no object. Bytes after the last
    complete object (a truncated tail) are left for the caller: `ends[-1]` says where they start.
    O(n) in the bytes.
    """
    cdef Py_ssize_t n = data.shape[0], i = 0, j
    ends = []
    while i < n:
        try:
            j = skip_object(&data[0], i, n, 0)
        except ValueError as e:
            return ends, (i, str(e))
        if j < 0:
            break
        ends.append(j)
        i = j
    return ends, None


# ---- the msgpack templates (wire.pxd) against msgspec ------------------------------------------

def _check_templates():
    """Each template writes what msgspec encodes for its event Struct (small and large,
    negative, null and string values): a wrong constant run fails the import, not a replay."""
    cdef EventWriter w = EventWriter()
    cdef bytes cs = "cïd-x".encode()
    a, b, m = w.register_name(7), w.register_name("acct-β"), w.register_name("BTC-PERP")
    want, got = [], []
    for seq, ts, big in ((1, 0, 70_000), (2**31, 2**40, -(2**40)), (127, 2**62, -33)):
        mp_accepted(w, seq, ts, a, m, False, big, NULL, 0, seq, V_BUY + 1, V_LIMIT, True,
                    abs(big), 9, V_GTC + 1, True)
        want.append(M.OrderAccepted(seq=seq, ts=ts, account=7, market="BTC-PERP", cid=big,
                                    oid=seq, side="sell", kind="limit", price=abs(big), qty=9,
                                    tif="ioc", reduce_only=True))
        mp_accepted(w, seq, ts, b, m, True, 0, cs, len(cs), 3, V_BUY, V_LIMIT + 1, False, 0,
                    300, V_GTC, False)
        want.append(M.OrderAccepted(seq=seq, ts=ts, account="acct-β", market="BTC-PERP",
                                    cid="cïd-x", oid=3, side="buy", kind="market", price=None,
                                    qty=300, tif="gtc", reduce_only=False))
        mp_cancelled(w, seq, ts, a, m, False, big, NULL, 0, 4, 255, V_USER + 3)
        want.append(M.OrderCancelled(seq=seq, ts=ts, account=7, market="BTC-PERP", cid=big,
                                     oid=4, remaining=255, reason=VALUES[V_USER + 3 - V_BUY]))
        mp_amended(w, seq, ts, b, m, True, 0, cs, len(cs), 8, big > 0, abs(big), 65_536, True)
        want.append(M.OrderAmended(seq=seq, ts=ts, account="acct-β", market="BTC-PERP",
                                   cid="cïd-x", oid=8, price=abs(big) if big > 0 else None,
                                   qty=65_536, priority_kept=True))
        mp_fill(w, seq, ts, m, abs(big), 12, V_BUY + 1, a, False, big, NULL, 0, 10, 0,
                b, True, 0, cs, len(cs), 11, 2**33, big, -big, seq == 1)
        want.append(M.Fill(seq=seq, ts=ts, market="BTC-PERP", price=abs(big), qty=12,
                           taker_side="sell", taker_account=7, taker_cid=big, taker_oid=10,
                           taker_remaining=0, maker_account="acct-β", maker_cid="cïd-x",
                           maker_oid=11, maker_remaining=2**33, taker_fee=big, maker_fee=-big,
                           liquidation=seq == 1))
    got = w.take()
    assert got == b"".join(_mp_encode(e) for e in want), \
        "wire.pxd's msgpack templates and msgspec disagree"


_check_templates()
