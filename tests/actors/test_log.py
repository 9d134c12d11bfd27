"""Rate-limited logging: a flood of bad input writes a few lines, not one per item."""

import logging

from actors import LogThrottle


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_flood_logs_a_few_lines_per_kind_and_then_how_many_were_left_out(caplog):
    clock = Clock()
    t = LogThrottle(logging.getLogger("immune.test"), burst=3, interval=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="immune"):
        for i in range(1000):
            t.event("malformed", "frame.malformed", n=i)
            t.event("oversized", "frame.refused", n=i)
        clock.now = 5
        t.flush()  # the interval has not ended: no summary yet
        assert [r.getMessage() for r in caplog.records] == [
            "frame.malformed n=0", "frame.refused n=0", "frame.malformed n=1", "frame.refused n=1",
            "frame.malformed n=2", "frame.refused n=2"]
        caplog.clear()
        clock.now = 11
        t.event("malformed", "frame.malformed", n=1000)  # a new interval: the summary, then this one
        assert [r.getMessage() for r in caplog.records] == [
            "log.suppressed kind=malformed suppressed=997 seconds=11.0", "frame.malformed n=1000"]
        caplog.clear()
        t.flush(all=True)  # as the actor stops
        assert [r.getMessage() for r in caplog.records] == ["log.suppressed kind=oversized suppressed=997 seconds=11.0"]


def test_json_lines_carry_ecs_names_and_the_event_fields():
    import io
    import json

    from actors import get_logger, log_event, setup_logging

    out = io.StringIO()
    setup_logging("INFO", stream=out, format="json")
    try:
        log_event(get_logger("hive.router"), "frame.refused", logging.WARNING, peer="tcp://x y", size=7)
        try:
            raise ValueError("bad = thing")
        except ValueError:
            get_logger("hive.store").exception("crashed")
    finally:
        setup_logging("INFO")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["log"] == {"level": "warning", "logger": "hive.router"}
    assert first["event"] == {"action": "frame.refused"} and first["immune"] == {"peer": "tcp://x y", "size": 7}
    assert first["message"] == "frame.refused peer='tcp://x y' size=7" and first["@timestamp"].endswith("Z")
    assert second["error"]["type"] == "ValueError" and "bad = thing" in second["error"]["stack_trace"]


def test_a_journal_entry_keeps_fields_and_multi_line_values():
    from actors._log import _journal_datagram

    data = _journal_datagram([("MESSAGE", "two\nlines"), ("IMMUNE_EVENT", "child.exit")])
    assert data == b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\nIMMUNE_EVENT=child.exit\n"
