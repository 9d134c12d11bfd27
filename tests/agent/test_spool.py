"""The disk spool as a plain object: no trio, no sockets."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

import wire
from actors import Codec, DecodeError
from agent import Spool, SpoolError

CODEC = Codec(wire.AgentMessage)


def batch(seq: int, n: int = 3) -> list:
    """Events whose content says which batch they belong to."""
    return [wire.Exec(pid=seq, tid=i, filename=f"/bin/b{seq}", argv=["b", str(seq), str(i)]) for i in range(n)]


def decode(frame: bytes) -> wire.EventBatch:
    msg = CODEC.decode(frame)
    assert isinstance(msg, wire.EventBatch)
    return msg


def origin(msg: wire.EventBatch) -> int:
    """Which appended batch a frame carries (its events' pid)."""
    pids = {e.pid for e in msg.events}
    assert len(pids) == 1
    return pids.pop()


def test_append_sync_pending_round_trip(tmp_path):
    with Spool(tmp_path) as s:
        assert s.stream and s.last_seq == 0 and s.acked == 0
        assert [s.append(batch(i)) for i in range(1, 6)] == [1, 2, 3, 4, 5]
        assert s.pending(1) == []  # nothing is sent before it is durable
        assert s.sync() == 5
        got = s.pending(2, max_batches=3)
        assert [seq for seq, _ in got] == [2, 3, 4]
        for seq, frame in got:
            msg = decode(frame)
            assert (msg.seq, msg.stream) == (seq, s.stream)
            assert msg.events == batch(seq)
        st = s.statistics()
        assert (st.batches, st.events, st.last, st.acked) == (5, 15, 5, 0)


def test_unsynced_batches_are_not_kept(tmp_path):
    with Spool(tmp_path) as s:
        s.append(batch(1))
        s.sync()
        s.append(batch(2))
    with Spool(tmp_path) as s:
        assert s.last_seq == 1 and s.next_seq == 2
        assert [seq for seq, _ in s.pending(1)] == [1]


def test_ack_deletes_segments_and_survives_a_restart(tmp_path):
    s = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1024)
    for i in range(1, 101):
        s.append(batch(i))
    s.sync()
    before = len(list(tmp_path.glob("*.seg")))
    assert before > 5
    with pytest.raises(ValueError):
        s.ack(101)
    s.ack(60)
    after = list(tmp_path.glob("*.seg"))
    assert len(after) < before
    first_left = min(int(p.stem) for p in after)
    assert 45 < first_left <= 61  # only segments holding nothing unacked went
    assert s.statistics().batches == 40
    stream = s.stream
    s.close()
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1024) as s:
        assert s.stream == stream and s.acked == 60
        got = s.pending(1, max_batches=1000)
        assert [seq for seq, _ in got] == list(range(61, 101))
        assert all(origin(decode(f)) == seq for seq, f in got)
        assert s.append(batch(101)) == 101


def test_a_lost_ack_file_only_means_redelivery(tmp_path):
    with Spool(tmp_path) as s:
        for i in range(1, 11):
            s.append(batch(i))
        s.sync()
        s.ack(7)
    (tmp_path / "acked").write_bytes(b"garbage that fails its crc")
    with Spool(tmp_path) as s:
        assert s.acked == 0
        assert [seq for seq, _ in s.pending(1)] == list(range(1, 11))


def test_a_torn_tail_is_truncated_and_the_sequence_continues(tmp_path):
    with Spool(tmp_path) as s:
        for i in range(1, 6):
            s.append(batch(i))
        s.sync()
    (seg,) = tmp_path.glob("*.seg")
    good = seg.stat().st_size
    # A record only half on disk when the machine stopped.
    with Spool(tmp_path) as s:
        s.append(batch(6, n=50))
        s.sync()
    os.truncate(seg, good + 200)
    with Spool(tmp_path) as s:
        assert seg.stat().st_size == good
        assert s.last_seq == 5 and s.statistics().corrupt == 0
        assert s.append(batch(6)) == 6
        s.sync()
    with Spool(tmp_path) as s:
        got = s.pending(1)
        assert [origin(decode(f)) for _, f in got] == [1, 2, 3, 4, 5, 6]


def test_garbage_after_the_last_record_is_cut(tmp_path):
    with Spool(tmp_path) as s:
        for i in range(1, 4):
            s.append(batch(i))
        s.sync()
    (seg,) = tmp_path.glob("*.seg")
    with open(seg, "ab") as f:
        f.write(os.urandom(100))
    with Spool(tmp_path) as s:
        assert s.last_seq == 3
        assert [seq for seq, _ in s.pending(1)] == [1, 2, 3]


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_crc_damage_in_an_old_segment_is_skipped_and_the_stream_moves_on(tmp_path):
    with Spool(tmp_path, segment_bytes=1024) as s:
        for i in range(1, 41):
            s.append(batch(i))
        s.sync()
        stream = s.stream
    segs = sorted(tmp_path.glob("*.seg"), key=lambda p: int(p.stem))
    assert len(segs) > 3
    # Damage the payload of the first record of the second segment.
    second = int(segs[1].stem)
    flip(segs[1], 30)
    with Spool(tmp_path, segment_bytes=1024) as s:
        assert s.statistics().corrupt == 1
        third = int(segs[2].stem)
        got = [seq for seq, _ in s.pending(1, max_batches=100)]
        assert got == list(range(1, second)) + list(range(third, 41))
        s.ack(second - 1)
        # The hive will ask for `second`, which is gone: a new stream starts at what is held.
        assert s.first_unacked() == third
        assert s.new_stream() != stream
        got = s.pending(1, max_batches=100)
        assert [seq for seq, _ in got] == list(range(1, 41 - third + 1))
        assert [origin(decode(f)) for _, f in got] == list(range(third, 41))
        assert all(decode(f).stream == s.stream for _, f in got)
        new = s.stream
    with Spool(tmp_path, segment_bytes=1024) as s:  # the new numbering is persistent
        assert s.stream == new
        assert [origin(decode(f)) for _, f in s.pending(1, max_batches=100)] == list(range(third, 41))
        assert s.append(batch(41)) == 41 - third + 1


def test_damage_found_when_reading_is_never_sent(tmp_path):
    with Spool(tmp_path) as s:
        for i in range(1, 6):
            s.append(batch(i))
        s.sync()
        (seg,) = tmp_path.glob("*.seg")
        flip(seg, s._segments[0].offsets[2] + 25)  # inside batch 3's payload
        got = s.pending(1)
        assert [seq for seq, _ in got] == [1, 2, 4, 5]
        assert s.statistics().corrupt == 1
        s.ack(2)
        assert s.first_unacked() == 4


# ---- a batch is always one the hive takes -------------------------------------------------


def long_events(n: int, cmdline: int = 16 << 10) -> list:
    return [wire.Open(pid=7, tid=i, path=f"/etc/f{i}", cmdline="x" * cmdline) for i in range(n)]


def frames_of(s: Spool, packed) -> list[bytes]:
    """The frames of ``packed`` as the hive receives them."""
    seqs = [s.append(p) for p in packed]
    s.sync()
    out = []
    while len(out) < len(seqs):
        out += [f for _, f in s.pending(seqs[len(out)], max_batches=len(seqs) - len(out))]
    return out


def test_events_are_packed_within_the_byte_bound_in_order(tmp_path):
    with Spool(tmp_path) as s:
        # Usual events: batches of `most`, each one encoding of its events.
        small = batch(1, n=600)
        packed = s.pack(small, 256)
        assert [p.events for p in packed] == [256, 256, 88]
        assert packed[0].payload == msgspec.msgpack.encode(small[:256])
        packed = s.pack(long_events(1000), 256)
        frames = frames_of(s, packed)
        assert len(frames) == len(packed)
        assert all(len(f) <= wire.MAX_BATCH_BYTES for f in frames)
        assert sum(map(len, frames)) / len(frames) > 0.8 * wire.MAX_BATCH_BYTES  # filled, not crumbled
        events = [e for f in frames for e in decode(f).events]
        assert events == long_events(1000)
        # After large events, a batch of usual ones is small once.
        first, *rest = [p.events for p in s.pack(small, 256)]
        assert first < 64 and rest[:2] == [256, 256]


def test_an_edge_report_stays_in_the_batch_of_its_event(tmp_path):
    with Spool(tmp_path) as s:
        events = batch(1, n=300)
        reports = [wire.Edge(pid=events[255].pid, time=events[255].time, alert="a1"),
                   wire.Edge(pid=events[255].pid, time=events[255].time, alert="a2")]
        events[256:256] = reports  # an event at the end of the first batch, then its two reports
        packed = s.pack(events, 256)
        assert [p.events for p in packed] == [255, 47]  # the event moves on with them
        second = msgspec.msgpack.decode(packed[1].payload, type=list[wire.AnyEvent])
        assert second[:3] == [events[255], *reports]


def test_an_event_above_the_bound_goes_alone(tmp_path):
    with Spool(tmp_path, batch_bytes=64 << 10) as s:
        events = long_events(3, cmdline=12 << 10)
        events.insert(1, wire.Open(pid=7, tid=99, cmdline="\U0001F600" * wire.MAX_CMDLINE, parent_cmdline="y" * 9999))
        packed = s.pack(events)
        assert [p.events for p in packed] == [1, 1, 2]
        frames = frames_of(s, packed)
        assert len(frames[1]) > 64 << 10 and all(len(f) <= 64 << 10 for f in (frames[0], frames[2]))
        assert [e for f in frames for e in decode(f).events] == events
        with pytest.raises(ValueError, match="pack"):
            s.append(long_events(8, cmdline=12 << 10))  # more than one batch at once


def test_a_batch_the_hive_refused_is_sent_again_with_its_events_fitted(tmp_path):
    """Spooled beyond today's contract (an earlier version, a bug): the first
    send is the record as it is; a resend is checked with the hive's own
    decoder and fitted, so the stream does not stall on it."""
    with Spool(tmp_path) as s:
        s.append(batch(1))
        s.append([wire.Open(pid=2, path="/" + "p" * 10_000), wire.Exec(pid=2, argv=["a"] * 5000)])
        s.append(batch(3))
        s.sync()
        first = s.pending(1)
        with pytest.raises(DecodeError, match="Expected `str` of length <= 4096"):
            CODEC.decode(first[1][1])
        again = s.pending(2)  # not acknowledged: sent again
        assert [seq for seq, _ in again] == [2, 3] and again[1] == first[2]
        opened, executed = decode(again[0][1]).events
        assert len(opened.path) == wire.MAX_PATH and opened.path.endswith(wire.CUT)
        assert len(executed.argv) == wire.MAX_ARGV and executed.argv_truncated
        assert s.pending(2)[0] == again[0] and s.statistics().repaired == 1  # counted once
        assert s.statistics().dropped_events == 0


def test_a_batch_that_cannot_be_made_acceptable_is_skipped_and_counted(tmp_path):
    with Spool(tmp_path) as s:
        s.append(batch(1))
        s.append([wire.Open(pid=2 ** 63, path="/etc/x"), wire.Open(pid=2, path="/etc/y")])  # no fit for that
        s.append(batch(3))
        s.sync()
        assert [seq for seq, _ in s.pending(1)] == [1, 2, 3]
        s.ack(1)
        assert [origin(decode(f)) for _, f in s.pending(2)] == [3]
        st = s.statistics()
        assert (st.unsendable, st.dropped_events, st.dropped_batches) == (1, 2, 1)
        assert s.first_unacked() == 3  # a gap, handled as a drop's: a new stream
        assert s.take_dropped() == 0  # the hive may have it, until it asks for it
        s.new_stream()
        assert s.take_dropped() == 2
        s.append(batch(4))
        s.sync()
        assert [origin(decode(f)) for _, f in s.pending(1)] == [3, 4]
    with Spool(tmp_path) as s:
        assert s.statistics().dropped_events == 2


def test_a_batch_spooled_above_the_byte_bound_is_skipped_when_refused(tmp_path):
    """An earlier relay batched by count only: 256 events of 16 KiB, above
    what a hive at its least max_frame takes.  Sent as it is first (a hive
    with a larger max_frame takes it, and an ack over it takes the loss back)."""
    with Spool(tmp_path, batch_bytes=64 << 20) as s:
        s.append(s.pack(long_events(256), 256)[0])
        s.append(batch(2))
        s.sync()
    with Spool(tmp_path) as s:
        assert len(s.pending(1)[0][1]) > 4 << 20
        assert [origin(decode(f)) for _, f in s.pending(1)] == [2]
        st = s.statistics()
        assert (st.unsendable, st.dropped_events) == (1, 256)
        s.ack(2)  # the hive had it after all
        assert s.statistics().dropped_events == 0 and s.take_dropped() == 0


def test_when_full_the_oldest_are_dropped_and_counted(tmp_path):
    bound = 64 << 10
    s = Spool(tmp_path, max_bytes=bound, segment_bytes=4096)
    appended = 0
    for i in range(1, 2001):
        assert s.append(batch(i)) == i
        appended += 3
        if i % 50 == 0:
            s.sync()
            assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) <= bound
    s.sync()
    st = s.statistics()
    assert st.bytes <= bound
    assert st.dropped_events > 0
    assert st.dropped_events + st.events == appended  # each event either held or counted
    assert st.dropped_batches + st.batches == 2000
    held = [origin(decode(f)) for _, f in s.pending(1, max_batches=5000)]
    assert held == list(range(2001 - st.batches, 2001))  # the newest survive, in order
    assert s.first_unacked() == held[0] != 1
    # Dropped batches that were durable might have reached a hive; they are
    # known lost once the hive asks for one of them (and a new stream starts).
    certain = s.take_dropped()
    assert certain < st.dropped_events
    s.new_stream()
    assert certain + s.take_dropped() == st.dropped_events
    assert s.take_dropped() == 0
    s.close()
    with Spool(tmp_path, max_bytes=bound, segment_bytes=4096) as s:
        assert s.statistics().dropped_events == st.dropped_events


def test_an_ack_over_dropped_batches_takes_them_off_the_count(tmp_path):
    with Spool(tmp_path, max_bytes=8 << 10, segment_bytes=1024) as s:
        for i in range(1, 301):
            s.append(batch(i))
            s.sync()
        st = s.statistics()
        assert st.dropped_batches > 0
        # The hive had stored them all before the drops (only the acks were late).
        s.ack(s.first_unacked() - 1)
        after = s.statistics()
        assert (after.dropped_events, after.dropped_batches) == (0, 0)
        assert s.take_dropped() == 0
    with Spool(tmp_path, max_bytes=8 << 10, segment_bytes=1024) as s:
        assert s.statistics().dropped_events == 0


def test_dropping_acknowledged_batches_is_not_a_loss(tmp_path):
    with Spool(tmp_path, max_bytes=16 << 10, segment_bytes=2048) as s:
        for i in range(1, 1001):
            s.append(batch(i))
            s.sync()
            s.ack(i)
        assert s.statistics().dropped_events == 0
        assert s.statistics().bytes <= 16 << 10


def test_a_batch_bigger_than_the_bound_is_dropped_and_counted(tmp_path):
    with Spool(tmp_path, max_bytes=4096) as s:
        assert s.append(batch(1, n=200)) == 0
        assert s.statistics().dropped_events == 200
        assert s.append(batch(2)) == 1


def test_a_lost_state_file_starts_a_new_stream_at_the_first_unacked(tmp_path):
    with Spool(tmp_path) as s:
        for i in range(1, 11):
            s.append(batch(i))
        s.sync()
        s.ack(4)
        old = s.stream
    (tmp_path / "state.json").unlink()
    with Spool(tmp_path) as s:
        assert s.stream != old
        got = s.pending(1)
        assert [seq for seq, _ in got] == list(range(1, 7))
        assert [origin(decode(f)) for _, f in got] == list(range(5, 11))


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_is_a_spool_error_and_a_retry_after_space_frees_loses_nothing(tiny_fs):
    s = Spool(tiny_fs / "spool", max_bytes=8 << 20, segment_bytes=16 << 10)
    seq = 0
    with pytest.raises(SpoolError) as err:
        while True:
            seq = s.append(batch(seq + 1, n=20))
            s.sync()
    assert err.value.errno == errno.ENOSPC
    assert "No space left" in str(err.value)
    durable = s.last_seq
    assert durable == seq - 1  # the last one is buffered, not accepted
    with pytest.raises(SpoolError):
        s.sync()  # still full: the retry fails the same way
    s.ack(durable)  # the hive took everything: segments go, space frees
    assert s.sync() == seq
    s.close()
    with Spool(tiny_fs / "spool", max_bytes=8 << 20, segment_bytes=16 << 10) as s:
        got = s.pending(1)
        assert [seq for seq, _ in got] == [seq]
        assert decode(got[0][1]).events == batch(seq, n=20)


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import wire
    from agent import Spool
    s = Spool({folder!r}, max_bytes=1 << 30, segment_bytes=256 << 10)
    while True:
        for _ in range(7):
            seq = s.next_seq
            s.append([wire.Exec(pid=seq, tid=i, filename=f"/bin/b{{seq}}", argv=["b", str(seq), str(i)])
                      for i in range(3)])
        print(s.sync(), flush=True)
""")


def test_every_batch_reported_accepted_survives_sigkill(tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    script = CHILD.format(root=root, folder=str(tmp_path / "spool"))
    accepted = 0
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        target = accepted + 200 + 37 * round_
        for line in p.stdout:
            accepted = max(accepted, int(line))
            if accepted >= target:
                break
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        assert p.returncode == -signal.SIGKILL
        with Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=256 << 10) as s:
            got = s.pending(1, max_batches=100_000)
            seqs = [seq for seq, _ in got]
            assert seqs[:accepted] == list(range(1, accepted + 1)), f"round {round_}"
            for seq, frame in got:
                assert decode(frame).events == batch(seq)


def test_a_sync_in_steps_lets_appends_go_on_and_counts_only_what_it_wrote(tmp_path):
    with Spool(tmp_path) as s:
        s.append(batch(1))
        job = s.begin_sync()
        s.append(batch(2))  # while the job runs elsewhere: for the next sync
        job.run()
        assert s.last_seq == 0  # durable only once ended
        assert s.end_sync(job) == 1
        assert [seq for seq, _ in s.pending(1)] == [1]
        with pytest.raises(RuntimeError):
            s.end_sync(job)
        assert s.sync() == 2
    with Spool(tmp_path) as s:
        assert [origin(decode(f)) for _, f in s.pending(1)] == [1, 2]


def test_a_sync_that_never_ran_gives_its_bytes_back(tmp_path):
    with Spool(tmp_path) as s:
        s.append(batch(1))
        job = s.begin_sync()  # then cancelled before its thread started
        s.append(batch(2))
        assert s.end_sync(job) == 0
        assert s.sync() == 2
    with Spool(tmp_path) as s:
        assert [origin(decode(f)) for _, f in s.pending(1)] == [1, 2]


def test_a_segment_dropped_while_its_sync_runs_is_counted_and_nothing_else_is_lost(tmp_path):
    with Spool(tmp_path, max_bytes=4096, segment_bytes=1024) as s:
        s.append(batch(1, n=10))
        job = s.begin_sync()
        while s.statistics().dropped_batches == 0:  # the segment of batch 1 goes while it is written
            s.append(batch(s.next_seq, n=10))
        job.run()
        s.end_sync(job)
        last = s.sync()
        got = [seq for seq, _ in s.pending(1, max_batches=100)]
        assert got and got[-1] == last and 1 not in got
        assert s.take_dropped() == s.statistics().dropped_events  # never durable: lost for certain
