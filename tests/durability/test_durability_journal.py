"""The journal's files (gateway/journal.py): records with length, seq and CRC32, one write and
at most one fsync per loop turn, segments that roll over, what `read` finds in torn and corrupt
files, snapshots written atomically. Real files in a temporary folder."""
import os
import re
import zlib

import msgspec
import pytest

from perpdex.engine import messages as M
from perpdex.gateway import journal as J
from perpdex.gateway import logfile as L
from perpdex.gateway.config import JournalSection
from perpdex.gateway.durability import Deadline, Reply
from tests.harness import HANG_S
from tests.pages import documented_defaults


def orders(n, start=0):
    return [M.NewOrder(account="a", market="BTC-PERP", cid=k, side="buy", kind="limit", qty=1,
                       price=100, ts=k + 1) for k in range(start, start + n)]


def test_a_record_carries_its_length_seq_and_a_crc32_over_header_and_payload(tmp_path):
    jr = J.Journal(tmp_path)
    cmd = orders(1)[0]
    jr.append([cmd])
    jr.close()
    data = next(tmp_path.glob("*.journal")).read_bytes()
    length, seq, kind, crc = J.HEADER.unpack_from(data)
    payload = data[J.HEADER.size:J.HEADER.size + length]
    assert (seq, kind) == (1, J.COMMAND)
    assert msgspec.msgpack.decode(payload, type=M.AnyCommand) == cmd
    assert crc == zlib.crc32(payload, zlib.crc32(L.HEAD.pack(length, seq, kind)))
    rest = data[J.HEADER.size + length:]
    assert J.HEADER.unpack_from(rest)[1:3] == (2, J.TURN) and len(rest) == J.HEADER.size


def test_each_loop_turn_is_one_write_and_one_fsync_with_fsync_batch(tmp_path, monkeypatch):
    writes = []
    real = os.write
    monkeypatch.setattr(J.os, "write", lambda fd, b: writes.append(len(b)) or real(fd, b))
    jr = J.Journal(tmp_path, fsync="batch")
    for turn in range(5):
        jr.append(orders(10, 10 * turn))
        jr.sync()
    assert len(writes) == 5 and jr.fsyncs == 5
    jr.close()


def test_fsync_off_never_fsyncs_and_interval_fsyncs_from_its_own_thread(tmp_path):
    off = J.Journal(tmp_path / "off", fsync="off")
    off.append(orders(3))
    off.sync()
    assert off.fsyncs == 0
    off.closed = True
    iv = J.Journal(tmp_path / "iv", fsync="interval", interval_ms=5)
    iv.append(orders(3))
    iv.sync()
    assert iv.fsyncs == 0                       # not in the loop's way
    import time
    deadline = time.monotonic() + HANG_S            # every 5 ms; this, a hang
    while iv.fsyncs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert iv.fsyncs >= 1
    iv.close()


def test_segments_roll_over_at_segment_bytes_and_are_named_for_their_first_seq(tmp_path):
    jr = J.Journal(tmp_path, segment_bytes=4096)
    for turn in range(40):
        jr.append(orders(5, 5 * turn))
        jr.sync()
    jr.close()
    segs = J.segments(tmp_path)
    assert len(segs) > 5
    for seg in segs:
        first = J.HEADER.unpack_from(seg.read_bytes())[1] if seg.stat().st_size else None
        assert first in (None, int(seg.name.split(".")[0]))
    recs, scan = J.read_all(tmp_path)
    assert scan.commands == 200 and scan.cut == [] and scan.last == 240
    assert [r[0] for r in recs] == list(range(1, 241))


def test_replies_and_deadlines_are_journaled_among_the_commands(tmp_path):
    jr = J.Journal(tmp_path)
    jr.append([orders(1)[0], Reply("a", 7, b"\x80"), Deadline("a", 123), Deadline("a", None)])
    jr.close()
    recs, _ = J.read_all(tmp_path)
    assert [k for _, k, _ in recs] == [J.COMMAND, J.REPLY, J.DEADLINE, J.DEADLINE, J.TURN]
    assert J.decode(J.REPLY, recs[1][2]) == Reply("a", 7, b"\x80")
    assert J.decode(J.DEADLINE, recs[3][2]) == Deadline("a", None)


def journal_of(tmp_path, turns=3):
    jr = J.Journal(tmp_path)
    for turn in range(turns):
        jr.append(orders(2, 2 * turn))
    jr.close()
    return next(tmp_path.glob("*.journal"))


def test_a_record_cut_short_at_the_tail_is_a_torn_tail_and_its_whole_turn_is_cut(tmp_path):
    seg = journal_of(tmp_path)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 5)                    # the last turn marker, torn
    recs, scan = J.read_all(tmp_path)
    assert scan.commands == 4 and scan.last == 6
    (path, offset, n), = scan.cut
    assert path == seg and offset + n == size - 5
    L.cut_tail(scan)
    assert seg.stat().st_size == offset and J.read_all(tmp_path)[1].cut == []


def test_a_turn_without_its_end_marker_at_the_tail_is_cut(tmp_path):
    seg = journal_of(tmp_path)
    with open(seg, "ab") as f:
        f.write(L.record(10, J.COMMAND, msgspec.msgpack.encode(orders(1)[0])))
    _, scan = J.read_all(tmp_path)
    assert scan.commands == 6 and len(scan.cut) == 1


def test_zeros_at_the_tail_are_a_torn_tail(tmp_path):
    seg = journal_of(tmp_path)
    with open(seg, "ab") as f:
        f.write(bytes(100))
    _, scan = J.read_all(tmp_path)
    assert scan.commands == 6 and scan.cut[0][2] == 100


def test_a_corrupt_record_in_the_middle_is_an_error_naming_the_file_and_offset(tmp_path):
    seg = journal_of(tmp_path)
    data = bytearray(seg.read_bytes())
    length = J.HEADER.unpack_from(data)[0]
    second = J.HEADER.size + length
    data[second + J.HEADER.size + 3] ^= 0xFF    # a payload byte of record 2
    seg.write_bytes(bytes(data))
    with pytest.raises(J.JournalError, match=rf"{re.escape(str(seg))}: offset {second}: a record "
                                             r"whose CRC32 does not match"):
        J.read_all(tmp_path)


def test_a_snapshot_is_written_atomically_and_a_corrupt_one_is_refused(tmp_path):
    snap = J.Snapshot(seq=9, commands=4, state_hash="ab", engine=b"xyz", gateway={"k": 1})
    path = J.write_snapshot(tmp_path, snap)
    assert path.name == f"{9:020d}.snapshot" and list(tmp_path.glob(".*")) == []
    assert J.read_snapshot(path) == snap
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(J.JournalError, match="CRC32"):
        J.read_snapshot(path)


def test_the_reference_page_lists_every_journal_key_with_its_default():
    documented_defaults("[journal]", JournalSection)


def test_a_flipped_length_in_the_newest_segment_with_records_after_it_is_not_a_torn_tail(
        tmp_path):
    seg = journal_of(tmp_path)
    data = bytearray(seg.read_bytes())
    length = J.HEADER.unpack_from(data)[0]
    second = J.HEADER.size + length
    data[second:second + 4] = (len(data) * 2).to_bytes(4, "little")   # runs past the end
    seg.write_bytes(bytes(data))
    with pytest.raises(J.JournalError, match=rf"offset {second}: a record cut short, with a "
                                             r"valid record after it"):
        J.read_all(tmp_path)


def test_the_data_folder_and_its_journal_are_0700_without_keys_too(tmp_path):
    """Plain-text mode makes no keys (the keys make the folder 0700 otherwise), but the journal
    still holds every account's orders and balances."""
    data = tmp_path / "data"
    fd = J.lock(data)
    try:
        for folder in (data, data / "journal"):
            assert folder.stat().st_mode & 0o777 == 0o700, folder
    finally:
        os.close(fd)
