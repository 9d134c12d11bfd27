"""The enrollment door, and the ZAP decisions for both of the hive's doors."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import trio
import zmq

import wire
from actors import Codec, Context, Door, KeyPair, curve_server, log_event, watch_door

from ._router import CURVE_OVERHEAD, PEER_HWM
from ._store import Store, StoreError

ENROLL_DOMAIN = b"enroll"


ENROLL_MAX_FRAME = 4096
"""An enrollment request is a token and a name: a few hundred bytes."""


async def enroll_actor(ctx: Context, *, task_status: Any = trio.TASK_STATUS_IGNORED, path: Path | str,
                       keys: KeyPair, listen: str, bundle_key: bytes = b"") -> None:
    """The enrollment door: any CURVE key may connect (the channel is still
    encrypted and the agent pins our key from its token), but only a valid
    one-time token gets that key enrolled.  Refusals are counted and logged
    a few per interval, as at the router.  ``bundle_key`` is the public key
of the hive's policy bundles, which an enrolled agent pins."""
    store = await trio.to_thread.run_sync(Store, path)  # may wait on a database server
    sock = ctx.socket(zmq.ROUTER, codec=Codec(wire.Enroll, max_size=ENROLL_MAX_FRAME))
    z = sock.zmq
    curve_server(z, keys, domain=ENROLL_DOMAIN)
    z.setsockopt(zmq.MAXMSGSIZE, ENROLL_MAX_FRAME + CURVE_OVERHEAD)
    z.setsockopt(zmq.RCVHWM, PEER_HWM)
    sock.copy = False
    reply = Codec(wire.Enrolled)
    counts = ctx.stats.extra
    counts.update(enrolled=0, refused=0)
    door = Door(counts, lambda why, detail: ctx.throttle.event(why, "enroll.refused", why=why, detail=detail))

    async def serve() -> None:
        while True:
            for frames in await sock.recv_frames(64):
                if len(frames) != 3 or frames[1].bytes != b"":
                    continue  # REQ peers send [identity, "", body]
                ident, body = frames[0].bytes, frames[2]
                if ident not in door.idents:
                    door.spoke(body.get(zmq.SRCFD), ident)
                public = body.get("User-Id") or ""
                req = sock.decode(body.bytes)
                if req is None:
                    answer = wire.Enrolled(ok=False, detail="malformed enrollment request")
                else:
                    try:
                        await trio.to_thread.run_sync(store.redeem_token, req.token, req.agent, public)
                        answer = wire.Enrolled(ok=True, agent=req.agent, bundle_key=bundle_key)
                        counts["enrolled"] = int(counts["enrolled"]) + 1
                        log_event(ctx.log, "agent.enrolled", agent=req.agent, key=public)
                    except StoreError as e:
                        answer = wire.Enrolled(ok=False, detail=str(e))
                        counts["refused"] = int(counts["refused"]) + 1
                        ctx.throttle.event("token", "enroll.refused", why="token", agent=req.agent, reason=str(e),
                                           address=body.get("Peer-Address") or "")
                await sock.send_frames([ident, b"", reply.encode(answer)])

    async def flush_log() -> None:
        while True:
            await trio.sleep(1.0)
            ctx.throttle.flush()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(watch_door, z, door, syncs=ctx.runtime.zap_syncs))
            z.bind(listen)
            nursery.start_soon(serve)
            nursery.start_soon(flush_log)
            task_status.started()
    finally:
        store.close()


KEYS_FRESH = 5.0
"""Seconds the enrolled keys read in one go answer ZAP before they are read
again.  A key revoked meanwhile may still connect for that long, but the
router refuses every frame of a revoked agent."""


def zap_authorizer(path: Path | str):
    """ZAP decisions for the hive: enrolled, unrevoked keys on the agent
    domain; any key on the enrollment domain (its user id is the key).

    The enrolled keys are read all at once and kept ``KEYS_FRESH`` seconds,
    and ``authorize.cached`` answers from them on the caller's thread: a
    read and a thread hop per handshake, one at a time, made thousands of
    agents connecting at once wait past ZeroMQ's handshake timeout, so they
    dropped and tried again, and few ever got in.  A key not among them
    (enrolled since) is looked up on its own."""
    store: Store | None = None
    keys: dict[str, str] = {}
    loaded = -KEYS_FRESH

    def authorize(public: bytes, address: str, domain: str) -> str | None:
        nonlocal store, keys, loaded
        if domain == ENROLL_DOMAIN.decode():
            return public.decode()
        if store is None:
            store = Store(path, readonly=True)
        if time.monotonic() - loaded > KEYS_FRESH:
            keys, loaded = store.enrolled_keys(), time.monotonic()
        return keys.get(public.decode()) or store.authorize(public.decode())

    def cached(public: bytes, domain: str) -> str | None:
        if domain == ENROLL_DOMAIN.decode():
            return public.decode()
        return keys.get(public.decode()) if time.monotonic() - loaded <= KEYS_FRESH else None

    authorize.cached = cached  # type: ignore[attr-defined]
    return authorize
