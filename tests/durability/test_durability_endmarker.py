"""The end marker of the last turn is checked by itself (issue 20, finding 6): the marker of turn
seq N is exactly `record(N, TURN, b"")`, so a whole marker with a flipped bit is corruption that
stops the start naming the file and offset, while a marker cut short or zeroed (a torn write) is
cut as before. Real files; one real server for the start."""
from __future__ import annotations

import pytest

from perpdex.engine import messages as M
from perpdex.gateway import journal as J
from perpdex.gateway import logfile as L
from tests.harness import Venue, trade


def journal(tmp_path):
    """A journal of three turns; returns (its segment, the offset and bytes of the last marker)."""
    jr = J.Journal(tmp_path, fsync="off")
    for k in range(3):
        jr.append([M.Deposit(account="a", amount=k + 1, ts=k + 1)])
    jr.close()
    seg = J.segments(tmp_path)[-1]
    data = seg.read_bytes()
    marker = L.record(jr.seq, J.TURN, b"")
    assert data.endswith(marker)
    return seg, data, len(data) - len(marker), marker


def looks_torn(got: bytes, want: bytes) -> bool:
    """A prefix of the marker and zeros after it: what a torn write leaves."""
    k = len(got.rstrip(b"\0"))
    return got[:k] == want[:k]


def test_every_flipped_bit_in_the_last_turns_end_marker_stops_the_read_naming_file_and_offset(
        tmp_path):
    seg, data, at, marker = journal(tmp_path)
    ambiguous = 0
    for bit in range(len(marker) * 8):
        bad = bytearray(data)
        bad[at + bit // 8] ^= 1 << (bit % 8)
        if looks_torn(bytes(bad[at:]), marker):     # a 1 cleared into trailing zeros
            ambiguous += 1
            continue
        seg.write_bytes(bytes(bad))
        with pytest.raises(J.JournalError, match=rf"^{seg}: offset {at}: .*end marker"):
            J.read_all(tmp_path)
    assert ambiguous <= 1


@pytest.mark.parametrize("keep", range(J.HEADER.size))
def test_an_end_marker_cut_short_is_a_torn_tail_and_its_turn_is_cut(tmp_path, keep):
    seg, data, at, marker = journal(tmp_path)
    seg.write_bytes(data[:at + keep])
    recs, scan = J.read_all(tmp_path)
    assert scan.last == 4 and scan.cut and scan.cut[0][1] == 4 * J.HEADER.size + sum(
        len(p) for s, k, p in recs)


@pytest.mark.parametrize("keep", range(J.HEADER.size))
def test_an_end_marker_zeroed_from_some_byte_on_is_a_torn_tail(tmp_path, keep):
    seg, data, at, marker = journal(tmp_path)
    seg.write_bytes(data[:at + keep] + bytes(len(marker) - keep))
    _, scan = J.read_all(tmp_path)
    assert scan.last == 4 and scan.cut


def test_a_flipped_bit_in_the_last_end_marker_stops_the_start_naming_file_and_offset(tmp_path):
    v = Venue(tmp_path)
    try:
        v.start()
        trade(v)
        v.kill()
        seg = J.segments(v.data / "journal")[-1]
        data = bytearray(seg.read_bytes())
        at = len(data) - J.HEADER.size
        data[at + 5] ^= 0x01                        # the seq of the last turn's marker
        seg.write_bytes(bytes(data))
        rc, err = v.start(ok=False)
        assert rc == 2 and f"{seg}: offset {at}: " in err and "end marker" in err, err
    finally:
        v.stop()
