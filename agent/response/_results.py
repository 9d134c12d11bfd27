"""The executor's memory of the commands it has finished, kept on disk.

The hive sends a command again when the agent went away without answering
it.  If the agent restarted in between, the command must still be answered
with its first result and not run again: a second kill_process could hit a
new process that took the old pid.  So each result is appended (fsynced) to
``results.jsonl`` and read back at start; the file is rewritten, keeping
the newest ``keep``, when it holds twice that.  An evidence archive (its
bundle stays on disk) and oversized data values are left out of the stored
copy.  Lines are read back with the wire contract's own checks; one that
fails them for any reason is skipped and counted, never fatal."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import msgspec

import wire
from actors import log_event

MAX_VALUE = 64 << 10
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(wire.CommandResult).decode


class ResultLog:
    def __init__(self, path: Path, keep: int = 1024, log: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self.keep = keep
        self._log = log or logging.getLogger("immune.agent.response")
        self._lines = 0

    def load(self) -> OrderedDict[str, wire.CommandResult]:
        """The newest ``keep`` results by command id; a torn or foreign line
        (a crash mid-append) is skipped and logged."""
        done: OrderedDict[str, wire.CommandResult] = OrderedDict()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return done
        except OSError as e:
            log_event(self._log, "response.results_unreadable", logging.ERROR, path=str(self.path),
                      reason=e.strerror or str(e))
            return done
        bad = 0
        for line in raw.splitlines():
            try:
                result = _decode(line)
            except Exception:  # noqa: BLE001  (torn, foreign, nested too deep: one line, not the agent)
                bad += 1
                continue
            done.pop(result.command, None)
            done[result.command] = result
            self._lines += 1
        if bad:
            log_event(self._log, "response.results_skipped", logging.WARNING, path=str(self.path), lines=bad)
        while len(done) > self.keep:
            done.popitem(last=False)
        return done

    def append(self, result: wire.CommandResult, done: OrderedDict[str, wire.CommandResult]) -> None:
        """Keep ``result``; ``done`` is everything to keep if the file is compacted."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._lines >= 2 * self.keep:
                self._rewrite(done.values())
            else:
                with open(self.path, "ab") as f:
                    f.write(_encode(_kept(result)) + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                self._lines += 1
        except OSError as e:
            # Done and answered, just not remembered across a restart: say so.
            log_event(self._log, "response.result_not_kept", logging.ERROR, command=result.command,
                      reason=e.strerror or str(e))

    def _rewrite(self, results) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            n = 0
            for r in results:
                f.write(_encode(_kept(r)) + b"\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._lines = n


def _kept(result: wire.CommandResult) -> wire.CommandResult:
    """The copy stored: without the archive or oversized data values (not
    worth the disk)."""
    dropped = [k for k, v in result.data.items() if len(_encode(v)) > MAX_VALUE]
    if not dropped and not result.archive:
        return result
    data = {k: v for k, v in result.data.items() if k not in dropped}
    return msgspec.structs.replace(result, data=data, archive=b"")
