"""The TAXII 2.1 server of Herd at ``/taxii2/``: discovery, one API root
(``/taxii2/immune/``), one read-only collection of this hive's signed
indicators and sightings, its objects and manifest paged by ``limit`` and
``next`` and filtered by ``added_after``.

Only a ``peer`` token (or an admin) gets in: anything else is a 401 (no
or an unknown token) or a 403, as TAXII error messages.  The objects are
what the herd actor published into the store (``hive.herd.Intel``); this
module only reads them.  The query's parsing is a plain function
(``parse_query``), fuzzed with the rest of the console's inputs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._auth import PEER, BadRequest, authenticate, role_allows

TAXII = "application/taxii+json;version=2.1"
STIX = "application/stix+json;version=2.1"
ROOT = "immune"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_NAMESPACE = uuid.UUID("0c5e0b6e-9d1c-4f3a-8b0e-7f4f6a2d9c31")


class TaxiiError(Exception):
    def __init__(self, status: int, title: str, description: str = "") -> None:
        super().__init__(title)
        self.status, self.title, self.description = status, title, description


def collection_id(hive_public: bytes) -> str:
    """This hive's collection: the same id for as long as its key."""
    return str(uuid.uuid5(_NAMESPACE, hive_public.hex()))


def _hive_public(console: Any) -> bytes:
    path = Path(console.config.data_dir) / "keys" / "bundle.pub"
    try:
        return path.read_bytes()
    except OSError:
        raise TaxiiError(503, "this hive has no herd key yet", f"{path} cannot be read") from None


def parse_query(params: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``added_after`` (µs since the epoch), ``limit`` and ``next`` (a
    sequence number) of a query; TaxiiError (400) for anything else."""
    from hive.herd import HerdError, parse_stamp

    out: dict[str, Any] = {"added_after": None, "limit": DEFAULT_LIMIT, "after": 0}
    for key in params.keys():
        if key not in allowed and not key.startswith("match["):
            raise TaxiiError(400, f"unknown parameter {key[:40]!r}", f"this endpoint takes {', '.join(allowed)}")
    for key in params.keys():
        if key.startswith("match["):
            raise TaxiiError(400, f"filter {key[:40]!r} is not supported", "filter by added_after only")
    if "added_after" in params:
        try:
            out["added_after"] = int(round(parse_stamp(params["added_after"]) * 1e6))
        except HerdError as e:
            raise TaxiiError(400, "bad added_after", str(e)) from None
    if "limit" in params:
        text = params["limit"]
        if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text)):
            raise TaxiiError(400, "bad limit", f"limit is a whole number from 1 ({text[:20]!r} is not)")
        out["limit"] = min(int(text), MAX_LIMIT)
    if "next" in params:
        text = params["next"]
        if not (text.startswith("s") and text[1:].isascii() and text[1:].isdigit() and 1 < len(text) <= 19):
            raise TaxiiError(400, "bad next", "next must be a value a previous response gave")
        out["after"] = int(text[1:])
    return out


def _response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type=TAXII, headers=headers)


def _error(e: TaxiiError) -> Response:
    doc = {"title": e.title, "http_status": str(e.status)}
    if e.description:
        doc["description"] = e.description
    headers = {"WWW-Authenticate": 'Bearer realm="immune"'} if e.status == 401 else None
    return _response(doc, e.status, headers)


def _accepts(request: Request, *types: str) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    wanted = {"*/*", "application/*", *(t.split(";")[0] for t in types)}
    if not wanted & set(offered):
        raise TaxiiError(406, "not acceptable", f"this endpoint answers {' or '.join(types)}")


def endpoint(fn: Any) -> Any:
    """Peers only; TAXII error messages for every refusal."""
    async def guarded(request: Request) -> Response:
        try:
            try:
                user = await authenticate(request)
            except BadRequest as e:
                raise TaxiiError(e.status, str(e)) from None
            if user is None:
                raise TaxiiError(401, "send a peer's API token (Authorization: Bearer TOKEN)")
            if not role_allows(user.role, PEER):
                raise TaxiiError(403, f"TAXII needs the {PEER} role; {user.name} is {user.role}")
            if request.app.state.console.config.herd.serve is False:
                raise TaxiiError(404, "this hive does not serve its indicators ([herd] serve = false)")
            return await fn(request)
        except TaxiiError as e:
            return _error(e)
    guarded.__name__ = fn.__name__
    return guarded


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}/taxii2/"


@endpoint
async def discovery(request: Request) -> Response:
    _accepts(request, TAXII)
    parse_query(request.query_params, ())
    root = _base(request) + f"{ROOT}/"
    return _response({"title": "SENTINEL IMMUNE hive", "description": "indicators this hive learned",
                      "default": root, "api_roots": [root]})


@endpoint
async def api_root(request: Request) -> Response:
    _accepts(request, TAXII)
    parse_query(request.query_params, ())
    return _response({"title": "SENTINEL IMMUNE herd", "versions": [TAXII], "max_content_length": 32 << 20})


def _collection(request: Request) -> dict:
    cid = collection_id(_hive_public(request.app.state.console))
    return {"id": cid, "title": "indicators", "description": "file hashes, addresses and command lines this "
            "hive quarantined, blocked or saw in incidents, signed with its herd key",
            "can_read": True, "can_write": False, "media_types": [STIX]}


def _the_collection(request: Request) -> dict:
    col = _collection(request)
    if request.path_params["collection"] != col["id"]:
        raise TaxiiError(404, "no such collection", f"this API root has one collection: {col['id']}")
    return col


@endpoint
async def collections(request: Request) -> Response:
    _accepts(request, TAXII)
    parse_query(request.query_params, ())
    return _response({"collections": [_collection(request)]})


@endpoint
async def collection(request: Request) -> Response:
    _accepts(request, TAXII)
    parse_query(request.query_params, ())
    return _response(_the_collection(request))


async def _page(request: Request) -> tuple[list[tuple[int, int, dict]], bool]:
    from hive.herd import Intel

    _the_collection(request)
    q = parse_query(request.query_params, ("added_after", "limit", "next"))
    return await request.app.state.console.read(
        lambda store: Intel(store.db).served(added_after=q["added_after"], after_seq=q["after"], limit=q["limit"]))


def _headers(rows: list[tuple[int, int, dict]]) -> dict[str, str]:
    from hive.herd import stamp

    if not rows:
        return {}
    return {"X-TAXII-Date-Added-First": stamp(rows[0][1] / 1e6), "X-TAXII-Date-Added-Last": stamp(rows[-1][1] / 1e6)}


def _envelope(rows: list, more: bool, key: str, items: list) -> dict:
    doc: dict[str, Any] = {"more": more}
    if more:
        doc["next"] = f"s{rows[-1][0]}"
    if items:
        doc[key] = items
    return doc


@endpoint
async def objects(request: Request) -> Response:
    _accepts(request, TAXII)
    rows, more = await _page(request)
    return _response(_envelope(rows, more, "objects", [obj for _, _, obj in rows]), headers=_headers(rows))


@endpoint
async def manifest(request: Request) -> Response:
    from hive.herd import stamp

    _accepts(request, TAXII)
    rows, more = await _page(request)
    items = [{"id": obj["id"], "date_added": stamp(added / 1e6), "version": obj.get("modified", obj.get("created", "")),
              "media_type": STIX} for _, added, obj in rows]
    return _response(_envelope(rows, more, "objects", items), headers=_headers(rows))


def routes() -> list:
    base = f"/taxii2/{ROOT}"
    return [
        Route("/taxii2/", discovery, methods=["GET"]),
        Route(f"{base}/", api_root, methods=["GET"]),
        Route(f"{base}/collections/", collections, methods=["GET"]),
        Route(base + "/collections/{collection}/", collection, methods=["GET"]),
        Route(base + "/collections/{collection}/objects/", objects, methods=["GET"]),
        Route(base + "/collections/{collection}/manifest/", manifest, methods=["GET"]),
    ]
