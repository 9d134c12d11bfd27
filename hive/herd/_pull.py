"""Fetching a peer's indicators: a TAXII 2.1 collection (``taxii2-client``,
blocking: run it in a worker thread) or a STIX bundle / MISP feed file;
then checking them (``_stix.check``) and keeping them (``Intel.take``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._intel import Intel, PullReport
from ._stix import HerdError, check_all, parse_document, parse_key

PAGE = 500
"""Objects asked for per TAXII request."""
MAX_FILE = 32 << 20
MAX_PAGE = 32 << 20
"""Bytes of one TAXII response read at most (a page of 500 objects is
well under a MiB): a peer cannot make the hive hold more."""
TIMEOUT = 30.0


@dataclass
class Fetched:
    objects: list[Any]
    cursor: str
    """What to ask for next time (TAXII: the last page's X-TAXII-Date-Added-Last; a file: its mtime and size)."""


def _bearer(token: str) -> Any:
    import requests.auth

    class Bearer(requests.auth.AuthBase):
        def __call__(self, r: Any) -> Any:
            r.headers["Authorization"] = f"Bearer {token}"
            return r

    return Bearer()


def fetch(peer: Any, cursor: str, *, timeout: float = TIMEOUT, max_page: int = MAX_PAGE) -> Fetched:
    """What ``peer`` offers since ``cursor`` (blocking); HerdError saying why not."""
    if peer.path:
        return _fetch_file(peer.path, cursor)
    return _fetch_taxii(peer, cursor, timeout, max_page)


def _fetch_file(path: str, cursor: str) -> Fetched:
    try:
        st = os.stat(path)
        mark = f"{st.st_mtime_ns}:{st.st_size}"
        if mark == cursor:
            return Fetched([], cursor)
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise HerdError(f"{path}: {e.strerror}") from None
    return Fetched(parse_document(data, limit=MAX_FILE), mark)


def _fetch_taxii(peer: Any, cursor: str, timeout: float, max_page: int) -> Fetched:
    import requests
    from taxii2client.exceptions import TAXIIServiceException
    from taxii2client.v21 import Collection, as_pages

    last = {"added": cursor}

    def note(response: Any, *args: Any, **kwargs: Any) -> None:
        # Responses are streamed (below): read at most max_page bytes, and
        # hand requests the body it would have read itself.
        body = response.raw.read(max_page + 1, decode_content=True)
        if len(body) > max_page:
            response.close()
            raise HerdError(f"{peer.url}: a response larger than {max_page} bytes")
        response._content, response._content_consumed = body, True
        added = response.headers.get("X-TAXII-Date-Added-Last")
        if added and response.ok:
            last["added"] = added

    try:
        collection = Collection(peer.url, verify=peer.ca or True, auth=_bearer(peer.token) if peer.token else None)
        # The client gives back bodies only; the date-added header (the
        # cursor TAXII means us to keep) comes through a requests hook.
        session = collection._conn.session
        session.hooks["response"].append(note)
        # requests lets REQUESTS_CA_BUNDLE override a session's CA file; a
        # per-request one stands, so the peer's pinned CA is what verifies.
        session.request = _with_defaults(session.request, timeout=timeout, verify=peer.ca or True, stream=True)
        objects: list[Any] = []
        kwargs = {"added_after": cursor} if cursor else {}
        for envelope in as_pages(collection.get_objects, per_request=PAGE, **kwargs):
            page = envelope.get("objects") or [] if isinstance(envelope, dict) else None
            if not isinstance(page, list):
                raise HerdError("a page of the collection is not a TAXII envelope")
            objects += page
            if len(objects) > 100_000:
                raise HerdError("more than 100000 objects in one pull")
        return Fetched(objects, last["added"])
    except HerdError:
        raise
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        raise HerdError(f"{peer.url}: HTTP {status}" + (" (the token is refused)" if status in (401, 403) else "")) \
            from None
    except (requests.RequestException, TAXIIServiceException, ValueError, OSError) as e:
        raise HerdError(f"{peer.url}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None


def _with_defaults(request: Any, **defaults: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        for k, v in defaults.items():
            if kwargs.get(k) is None:
                kwargs[k] = v
        return request(*args, **kwargs)
    return call


def keep(intel: Intel, peer: Any, fetched: Fetched, *, now: float, max_age: float) -> PullReport:
    """Check what ``peer`` sent and keep what passes; every refusal is in
    the report with its reason (the actor logs them, the CLI prints them)."""
    key = parse_key(peer.key) if peer.key else None
    good, bad, ignored = check_all(fetched.objects, key=key, now=now, max_age=max_age)
    report = intel.take(peer.name, peer.trust, good, now=now)
    report.refused = [(r.indicator, r.reason) for r in bad]
    report.ignored = ignored
    intel.set_state(f"peer:{peer.name}", fetched.cursor)
    return report


def pull(intel: Intel, peer: Any, *, now: float, max_age: float) -> PullReport:
    """Fetch and keep, in this thread (the CLI's ``intel pull``)."""
    return keep(intel, peer, fetch(peer, intel.state(f"peer:{peer.name}")), now=now, max_age=max_age)
