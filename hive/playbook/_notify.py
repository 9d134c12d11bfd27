"""notify: POST the alert as JSON to a webhook (a SOC, a chat, an AI triage
service).  Run by the hive, which holds the alert and stays reachable when an
agent is isolated.

One attempt per action, with a timeout, and no storm: after a failure a URL
rests for ``backoff`` seconds, and notifications to it in that time fail at
once with that reason instead of piling onto a dead endpoint.  Redirects are
not followed (a webhook that moved is a configuration to fix, and following
one could carry the alert somewhere unintended)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import wire

from ._actions import Notify


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_opener = urllib.request.build_opener(_NoRedirect)


def payload(alert: dict[str, Any], *, playbook: str, action: str) -> bytes:
    """The body: the alert itself, and a ``text`` line that chat webhooks
    (Slack, Mattermost) show as is."""
    text = (f"[{alert.get('level', '?')}] {alert.get('title', '?')} on "
            f"{alert.get('agent') or 'several hosts'} (playbook {playbook or '-'}, alert {alert.get('id', '?')})")
    return json.dumps({"text": text, "playbook": playbook, "action": action, "alert": alert}).encode()


class Notifier:
    def __init__(self, *, backoff: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self._clock = clock
        self._failed: dict[str, float] = {}

    def notify(self, cmd: Notify, *, playbook: str = "") -> wire.CommandResult:
        """Blocking (call it from a worker thread).  ``cmd`` was checked when
        it was made: its url is http(s)."""
        url = cmd.url
        host = urlsplit(url).netloc
        since = self._failed.get(host)
        now = self._clock()
        if since is not None and now - since < self.backoff:
            return wire.CommandResult(command=cmd.id, ok=False, detail=(
                f"not sent: {host} failed {now - since:.0f}s ago; next attempt after {self.backoff:g}s"))
        body = payload(cmd.alert, playbook=playbook, action=cmd.id)
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "sentinel-immune-hive"})
        timeout = cmd.timeout
        started = self._clock()
        try:
            with _opener.open(req, timeout=timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            self._failed[host] = self._clock()
            return wire.CommandResult(command=cmd.id, ok=False, detail=f"{host} answered HTTP {e.code} {e.reason}")
        except (TimeoutError, urllib.error.URLError, OSError) as e:
            self._failed[host] = self._clock()
            reason = getattr(e, "reason", e)
            return wire.CommandResult(command=cmd.id, ok=False, detail=f"{host} unreachable: {reason}")
        self._failed.pop(host, None)
        ms = (self._clock() - started) * 1000
        return wire.CommandResult(command=cmd.id, ok=True, detail=f"{host} answered HTTP {status} in {ms:.0f} ms",
                                  data={"status": status})
