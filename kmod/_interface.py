"""The one interface every sensor implements (Linux today; a BSD reader
can be added behind it), and what its statistics look like."""

from __future__ import annotations

import abc
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from wire import Event

from ._errors import KernelError
from ._policy import Policy


@dataclass
class SensorStatistics:
    events: dict[str, int] = field(default_factory=dict)
    """Events decoded so far, per kind."""
    drops: dict[str, int] = field(default_factory=dict)
    """Records the kernel could not queue (the ring buffer full up to the
    share their kind may use), per kind."""
    pending_bytes: int = 0
    """Bytes in the ring buffer not yet drained."""
    fanotify: dict[str, int | str] = field(default_factory=dict)
    """Permission answers (allowed, denied, audited, cached, ...) and errors;
    the exec guard's marking: mount news, scans, filesystems marked, and
    news-to-marked latency (mark_latency_p50_us, _p99_us, _max_us)."""
    watchdog: str = "off"
    """``armed``, ``failed-open`` or ``off`` (no fanotify)."""
    policy_generation: int = 0
    malformed: int = 0
    """Kernel records the decoder could not read (skipped, logged)."""
    hooks_off: dict[str, str] = field(default_factory=dict)
    """Hooks this kernel cannot have, with why (said once in the log at start)."""


class Sensor(abc.ABC):
    """A kernel sensor: start it, wait on ``fileno()`` (or ``wait()``), call
    ``drain()`` when it is readable, ``close()`` it at the end.

    ``drain()`` never blocks; ``fileno()`` becomes readable when events are
    pending (in batches, at most about ``latency`` late) or a notice (drops,
    watchdog) is waiting.  Level-triggered: drain until it returns fewer
    events than asked, then wait again."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def fileno(self) -> int: ...

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling thread until ``fileno()`` is readable."""

    @abc.abstractmethod
    def drain(self, max_events: int = 4096) -> list[Event]: ...

    @abc.abstractmethod
    def flush(self) -> None:
        """Have the kernel send what it holds back (folded repeats), for a
        last drain."""

    @abc.abstractmethod
    def reload(self, policy: Policy) -> None:
        """Apply a new policy in place, without detaching anything."""

    @abc.abstractmethod
    def notice(self, what: str, detail: str, count: int = 0) -> None:
        """Put a ``wire.Notice`` in the stream (the next drain); from any thread."""

    @abc.abstractmethod
    def exclude(self, *pids: int) -> None:
        """Never report or act on these processes (the agent's own)."""

    @abc.abstractmethod
    def include(self, *pids: int) -> None: ...

    @abc.abstractmethod
    def wake_at_once(self, kinds: Iterable[str]) -> None:
        """Deliver events of these kinds (``exec``, ``connect``...) as soon
        as they happen instead of in batches up to ``latency`` late: the kinds
        the agent's own rules act on.  Replaces the previous set; from any thread."""

    @abc.abstractmethod
    def statistics(self) -> SensorStatistics: ...

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_sensor(policy=None, **options) -> Sensor:
    """The sensor for this operating system (not started).  ``policy`` is a
    ``Policy``, a path to a TOML file, or None for the default policy; the
    options are those of ``LinuxSensor``."""
    if sys.platform.startswith("linux"):
        from ._linux import LinuxSensor  # it implements this interface

        return LinuxSensor(policy, **options)
    raise KernelError(f"no kernel sensor for {sys.platform} yet")
