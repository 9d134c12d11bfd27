"""Detection cannot stall silently: a batch that runs over its time budget is
cut short and what it skipped is counted (the sentinel's ``detect_skipped``),
and the time each rule takes is measured, the slowest named in the stats."""

import time

import trio
import zmq

from hive import sentinel_actor
from hive._actors import internal_codec
from hive._messages import Ingest
from hive.sigma._engine import SAMPLE
from test_sigma_limits import engine_with, exec_of, rule
from wire import Alert


def test_a_batch_over_its_budget_is_cut_short_and_counted(tmp_path):
    engine = engine_with(tmp_path, rule("CommandLine|contains: evil"),
                         rule("CommandLine|re: 'e[v]il.*[0-9]{3}$'", title="slow", number=2))
    batch = [exec_of("evil", pid=n) for n in range(3)]
    assert len(engine.process_batch(batch)) == 3
    assert engine.skipped == 0
    # No time at all: the first event is checked, the two after it are skipped.
    assert len(engine.process_batch(batch, budget=0.0)) == 1
    st = engine.statistics()
    assert st.skipped == engine.skipped == 2 and st.events == 4


def test_the_slowest_rules_are_measured_and_named(tmp_path):
    engine = engine_with(tmp_path, rule("Image|endswith: /sh", title="cheap"),
                         rule("CommandLine|re: 'e[v]il[0-9]+x$'", title="costly", number=2))
    long = exec_of("evil" + "7" * 500_000)
    for _ in range(2 * SAMPLE):  # every SAMPLE-th event is timed, the first one too
        engine.process(long)
    slowest = engine.statistics().slowest
    assert [c.title for c in slowest] == ["costly", "cheap"]
    assert slowest[0].tests == 2 * SAMPLE and slowest[0].seconds > slowest[1].seconds > 0


async def test_the_sentinel_starts_past_a_hostile_file_and_detects_within_its_budget(tmp_path, runtime):
    from actors import Context

    (tmp_path / "a_backtrack.yml").write_text(rule("CommandLine|re: '(a+)+$'", title="backtrack"))
    (tmp_path / "b_deep.yml").write_text("detection: " + "[" * 5000 + "]" * 5000)
    detect, correlate = "inproc://test.detect", "inproc://test.correlate"
    ctx = Context(runtime, "sentinel")
    codec = internal_codec()
    sink = runtime.zmq.socket(zmq.PULL)
    sink.bind(correlate)
    source = runtime.zmq.socket(zmq.PUSH)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: sentinel_actor(
                ctx, task_status=task_status, rule_dirs=[tmp_path], batch_budget=0.0,
                detect=detect, correlate=correlate))
            assert ctx.stats.extra["rules_loaded"] == 1 and ctx.stats.extra["rules_refused"] == 1
            source.connect(detect)
            hostile = [exec_of("a" * 10_000 + "b", pid=n) for n in range(3)]
            matching = [exec_of("xaaa", pid=n) for n in range(3)]
            for events in (hostile, matching):
                source.send(codec.encode(Ingest(agent="a", events=events)))
            alerts, started = [], time.perf_counter()
            while time.perf_counter() - started < 5 and (len(alerts) < 1 or ctx.stats.extra.get(
                    "detect_skipped", 0) < 4):
                try:
                    msg = codec.decode(sink.recv(zmq.NOBLOCK))
                except zmq.Again:
                    await trio.sleep(0.01)
                    continue
                if isinstance(msg, Alert):
                    alerts.append(msg)
            assert time.perf_counter() - started < 2
            # budget 0: each batch's first event is checked, the other two skipped
            assert [a.title for a in alerts] == ["backtrack"]
            assert ctx.stats.extra["detect_skipped"] == 4
            await trio.sleep(1.1)  # housekeeping publishes the costs once a second
            assert ctx.stats.extra["slowest_rules"].startswith("00000000-0000-4000-8000-000000000001 ")
            nursery.cancel_scope.cancel()
    finally:
        source.close(linger=0)
        sink.close(linger=0)
