"""The TAXII 2.1 server in process (httpx over ASGI): peers' tokens only,
the discovery, API root and collection documents, objects paged by
``limit``/``next`` and filtered by ``added_after`` with the date-added
headers, and bad input answered with a TAXII error, never a 500."""

from __future__ import annotations

import json
import time

import httpx
import pytest

import fleet
from hive import Store
from hive.console import Console, make_app
from hive.console._taxii import STIX, TAXII, collection_id
from hive.console._users import Users
from hive.herd import Intel, check_all, parse_stamp
from node import Config
from node._config import NodeConfig

PASSWORD = "correct horse battery"


@pytest.fixture
def console(tmp_path):
    key = fleet.SigningKey.load_or_create(tmp_path / "keys")
    store = Store(tmp_path / "hive.db")
    users = Users(store)
    for name, role in (("hive-b", "peer"), ("vera", "viewer"), ("ada", "admin")):
        users.add(name, role, PASSWORD, actor="t")
    now = time.time()
    # Five quarantines, published in two rounds: 11 objects (an identity,
    # then an indicator and a sighting per file).
    for i in range(5):
        store.db.execute(
            "INSERT INTO commands(id, agent, action, params, state, created, updated, result) VALUES(?,?,?,?,?,?,?,?)",
            (f"c{i}", "web-1", "quarantine_file", '{"path": "/tmp/x"}', "done", now - 10 + i, now - 10 + i,
             json.dumps({"text": "ok", "data": {"sha256": f"{i:x}" * 64}})))
        if i == 2:
            Intel(store.db).publish(key, now=now - 5, share_for=86400)
    Intel(store.db).publish(key, now=now, share_for=86400)
    console = Console(Config(node=NodeConfig(data=str(tmp_path))), tmp_path / "hive.db", run_dir=tmp_path / "run")
    console.tokens = {n: users.new_token(n, actor="t")[1] for n in ("hive-b", "vera", "ada")}
    console.key = key
    yield console
    console.close()
    store.close()


def client(console, user: str | None = "hive-b") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {console.tokens[user]}"} if user else {}
    headers["Accept"] = TAXII
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(console)), base_url="https://hive-a.test",
                             headers=headers)


def objects_url(console) -> str:
    return f"/taxii2/immune/collections/{collection_id(console.key.public)}/objects/"


async def test_discovery_root_and_collection_for_a_peer(console):
    async with client(console) as c:
        r = await c.get("/taxii2/")
        assert r.status_code == 200 and r.headers["content-type"] == TAXII
        assert r.json()["api_roots"] == ["https://hive-a.test/taxii2/immune/"] == [r.json()["default"]]
        r = await c.get("/taxii2/immune/")
        assert r.json()["versions"] == [TAXII]
        cols = (await c.get("/taxii2/immune/collections/")).json()["collections"]
        assert [col["id"] for col in cols] == [collection_id(console.key.public)]
        col = (await c.get(f"/taxii2/immune/collections/{cols[0]['id']}/")).json()
        assert col["can_read"] is True and col["can_write"] is False and col["media_types"] == [STIX]


async def test_objects_are_signed_and_paged_with_next_and_more(console):
    async with client(console) as c:
        seen, nxt, pages = [], None, 0
        while True:
            r = await c.get(objects_url(console), params={"limit": 4, **({"next": nxt} if nxt else {})})
            assert r.status_code == 200 and r.headers["content-type"] == TAXII
            env = r.json()
            pages += 1
            seen += env["objects"]
            assert parse_stamp(r.headers["X-TAXII-Date-Added-First"]) <= parse_stamp(r.headers["X-TAXII-Date-Added-Last"])
            if not env["more"]:
                assert "next" not in env
                break
            nxt = env["next"]
        assert pages == 3 and len(seen) == 11 == len({o["id"] for o in seen})
        good, refused, ignored = check_all(seen, key=console.key.public, now=time.time(), max_age=90 * 86400)
        assert not refused and ignored == 6  # the identity and the sightings: signed, not indicators
        assert sorted(p.value for p in good) == sorted(f"{i:x}" * 64 for i in range(5))
        # The manifest pages the same way.
        r = await c.get(objects_url(console).replace("/objects/", "/manifest/"), params={"limit": 20})
        assert len(r.json()["objects"]) == 11 and all(m["media_type"] == STIX for m in r.json()["objects"])


async def test_added_after_gives_only_the_later_round(console):
    async with client(console) as c:
        first = await c.get(objects_url(console), params={"limit": 7})
        cursor = first.headers["X-TAXII-Date-Added-Last"]
        later = (await c.get(objects_url(console), params={"added_after": cursor})).json()
        # The first round (identity, 3 files) was added at one time, the second (2 files) later.
        assert len(later["objects"]) == 4 and later["more"] is False
        empty = await c.get(objects_url(console), params={"added_after": "2999-01-01T00:00:00Z"})
        assert empty.status_code == 200 and empty.json() == {"more": False}
        assert "X-TAXII-Date-Added-First" not in empty.headers


@pytest.mark.parametrize("params, status, words", [
    ({"added_after": "yesterday"}, 400, "added_after"),
    ({"added_after": "2026-13-40T00:00:00Z"}, 400, "added_after"),
    ({"added_after": "2026-01-01T00:00:00+01:00"}, 400, "added_after"),
    ({"limit": "0"}, 400, "limit"),
    ({"limit": "-5"}, 400, "limit"),
    ({"limit": "ten"}, 400, "limit"),
    ({"limit": "9" * 40}, 400, "limit"),
    ({"next": "garbage"}, 400, "next"),
    ({"next": "s"}, 400, "next"),
    ({"next": "s" + "9" * 40}, 400, "next"),
    ({"match[type]": "indicator"}, 400, "not supported"),
    ({"colour": "red"}, 400, "unknown parameter"),
])
async def test_bad_queries_are_taxii_errors(console, params, status, words):
    async with client(console) as c:
        r = await c.get(objects_url(console), params=params)
        assert r.status_code == status and r.headers["content-type"] == TAXII
        assert words in r.json()["title"] and r.json()["http_status"] == str(status)


async def test_unknown_collection_and_unacceptable_media_type(console):
    async with client(console) as c:
        r = await c.get("/taxii2/immune/collections/00000000-0000-0000-0000-000000000000/objects/")
        assert r.status_code == 404 and r.json()["title"] == "no such collection"
        r = await c.get(objects_url(console), headers={"Accept": "text/html"})
        assert r.status_code == 406
        r = await c.get("/taxii2/other-root/")
        assert r.status_code == 404


async def test_only_peers_and_admins_get_in(console):
    async with client(console, None) as c:
        r = await c.get("/taxii2/")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == TAXII
        r = await c.get(objects_url(console), headers={"Authorization": "Bearer imt_nope.nope"})
        assert r.status_code == 401 and "unknown or revoked" in r.json()["title"]
        r = await c.get(objects_url(console), headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert r.status_code == 401
    async with client(console, "vera") as c:
        r = await c.get(objects_url(console))
        assert r.status_code == 403 and "peer role" in r.json()["title"]
    async with client(console, "ada") as c:
        assert (await c.get(objects_url(console))).status_code == 200
    async with client(console) as c:  # a peer reads TAXII and nothing else
        assert (await c.get("/api/alerts")).status_code == 403
        assert (await c.get("/metrics")).status_code == 403


async def test_a_hive_that_does_not_serve_says_so(console):
    console.config.herd.serve = False
    async with client(console) as c:
        r = await c.get("/taxii2/")
        assert r.status_code == 404 and "serve = false" in r.json()["title"]
