"""One triage over HTTP: the chat-completions call with its timeout, its
retries and the budget, ending in an :class:`Outcome` (a verdict, or the
reason there is none).  Runs in trio; httpx does the HTTP."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
import trio

from ._budget import Budget
from ._verdict import MAX_ANSWER, TriageError, Verdict, parse_answer, request_body

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
"""Answers that may go away if asked again; any other non-2xx will not."""


def endpoint(url: str) -> str:
    """Where the request goes: ``url`` as given when its path ends in
    ``/chat/completions``, else ``url`` + ``/chat/completions`` (so both
    ``http://host:8080/v1`` and the full path work)."""
    path = urlsplit(url).path.rstrip("/")
    if path.endswith("/chat/completions"):
        return url
    return url.rstrip("/") + "/chat/completions"


@dataclass
class Outcome:
    verdict: Verdict | None
    """None: the triage failed, ``reason`` says why."""
    reason: str = ""
    model: str = ""
    """The model that answered (as the server names it), else the one asked for."""
    seconds: float = 0.0
    calls: int = 0
    """HTTP requests made (0: none, e.g. over budget)."""


class ChatClient:
    """Asks ``url`` for verdicts.  Each request may take ``timeout`` seconds
    in all; a request that fails in a way that may pass (no connection, a
    timeout, HTTP 429 or 5xx) is tried again up to ``retries`` times after
    ``backoff`` seconds, doubling; each request is one call of ``budget``."""

    def __init__(self, url: str, *, model: str, token: str = "", timeout: float = 60.0, retries: int = 2,
                 budget: Budget, backoff: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = trio.sleep) -> None:
        import httpx

        self._httpx = httpx
        self.url = endpoint(url)
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.budget = budget
        self.backoff = backoff
        self._sleep = sleep
        headers = {"Content-Type": "application/json", "User-Agent": "sentinel-immune-hive"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # No redirects: a moved endpoint is a configuration to fix, and the
        # summary must go only where the operator said.
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ask(self, summary: str) -> Outcome:
        """A verdict on ``summary`` (redacted JSON text), or why there is none."""
        body = msgspec.json.encode(request_body(self.model, summary))
        start = time.monotonic()
        out = Outcome(None, model=self.model)
        wait = self.backoff
        for attempt in range(self.retries + 1):
            refusal = self.budget.refusal()
            if refusal is not None:
                out.reason = refusal if attempt == 0 else f"{out.reason}; no retry: {refusal}"
                break
            self.budget.spend()
            out.calls += 1
            try:
                answer = await self._post(body)
                out.verdict, named = parse_answer(answer)
                out.model = named or self.model
                out.reason = ""
                break
            except _Retry as e:
                out.reason = str(e)
            except TriageError as e:  # the model answered, badly: asking again costs the same
                out.reason = str(e)
                break
            if attempt < self.retries:
                await self._sleep(wait)
                wait *= 2
        if out.verdict is None and out.calls > 1:
            out.reason += f" (after {out.calls} attempts)"
        out.seconds = time.monotonic() - start
        return out

    async def _post(self, body: bytes) -> bytes:
        httpx = self._httpx
        # httpx's timeout bounds each phase; this bounds the whole request,
        # so a server dripping bytes cannot hold the triage forever.
        with trio.move_on_after(self.timeout) as scope:
            try:
                async with self._client.stream("POST", self.url, content=body) as r:
                    if r.status_code in _RETRY_STATUS:
                        raise _Retry(f"{self.url} answered HTTP {r.status_code} {r.reason_phrase}")
                    if not 200 <= r.status_code < 300:
                        raise TriageError(f"{self.url} answered HTTP {r.status_code} {r.reason_phrase}")
                    data = bytearray()
                    async for chunk in r.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_ANSWER:
                            raise TriageError(f"the answer is longer than {MAX_ANSWER} bytes")
                    return bytes(data)
            except httpx.TimeoutException:
                raise _Retry(f"{self.url}: no answer within {self.timeout:g} s") from None
            except httpx.HTTPError as e:
                raise _Retry(f"{self.url}: {_reason(e)}") from None
        assert scope.cancelled_caught
        raise _Retry(f"{self.url}: no answer within {self.timeout:g} s")


class _Retry(Exception):
    """A failure that may pass if asked again."""


def _reason(e: BaseException) -> str:
    own = str(e)
    cause = e.__cause__ or e.__context__
    while cause is not None and not own:
        own, cause = str(cause), cause.__cause__ or cause.__context__
    return own or type(e).__name__
