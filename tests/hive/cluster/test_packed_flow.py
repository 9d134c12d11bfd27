"""Packs through a real router and store writer on a real JetStream cluster:
many agents' batches in few messages, each stored once, a batch resent in
another pack dropped by the store, bad packs counted without losing the
good batches in them, and what goes on to detection packed too."""

import trio
import zmq

import wire
from actors import Child, Codec, Context, KeyPair, Supervisor, curve_client, zap_handler
from hive import Store, router_actor, zap_authorizer
from hive._actors import internal_codec
from hive._messages import Ingest, Packed
from hive.cluster import Bridge, Bus, ClusterSpec, writer_actor
from hive.cluster._bus import DETECT_STREAM, DETECT_SUBJECT, INGEST_SUBJECT, SENTINELS
from hive.cluster._leases import partition_of
from hive.cluster._pack import unpack
from tests.ports import tcp_endpoint

AGENT, HIVE, CODEC = Codec(wire.AgentMessage), Codec(wire.HiveMessage), internal_codec()
AGENTS, BATCHES, EVENTS = 24, 6, 4


def events(agent, seq, n=EVENTS, pad=0):
    return [wire.Exec(time=1_700_000_000_000_000_000 + seq * 1000 + i, pid=1000 + i, filename="/usr/bin/ls",
                      argv=["ls", *["x" * 4000] * pad], comm=agent[:15]) for i in range(n)]


async def wait_for(what, timeout=30.0):
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(0.1)


async def replies(z, want, timeout=20.0):
    """Acks until each stream's ack reaches ``want`` (or the time is up)."""
    acked = {}
    with trio.move_on_after(timeout):
        while any(acked.get(s, 0) < w for s, w in want.items()):
            try:
                m = HIVE.decode(z.recv(zmq.NOBLOCK))
            except zmq.Again:
                await trio.sleep(0.01)
                continue
            if isinstance(m, wire.Ack):
                acked[m.stream] = max(acked.get(m.stream, 0), m.seq)
    return acked


def stored(db):
    s = Store(db, readonly=True)
    try:
        return {(e.agent, e.time) for e in s.events(limit=100_000)}, len(s.events(limit=100_000))
    finally:
        s.close()


async def test_many_agents_batches_travel_packed_and_are_stored_once(tmp_path, nats_cluster, runtime):
    db = tmp_path / "hive.db"
    Store(db).close()
    names = [f"agent-{i:02d}" for i in range(AGENTS)]
    agent_keys = {n: KeyPair.generate() for n in names}
    s = Store(db)
    for n, k in agent_keys.items():
        s.enroll(n, k.public.decode())
    s.close()
    keys, listen = KeyPair.generate(), tcp_endpoint()
    spec = ClusterSpec(servers=tuple(nats_cluster.urls), node="n1", partitions=2, lease=5.0)
    tree = Supervisor([
        Child("zap", zap_handler, args={"authorize": zap_authorizer(db)}),
        Child("router", router_actor, args=dict(path=db, keys=keys, listen=listen, cluster=spec)),
        Child("writer", writer_actor, args=dict(path=db, spec=spec, detect="inproc://test.detect")),
    ])
    socks = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(tree, Context(runtime, "hive"))
        router, writer = runtime.registry["hive.router"].extra, runtime.registry["hive.writer"].extra
        await wait_for(lambda: writer.get("partitions") == "0 1")
        for n in names:
            z = socks[n] = runtime.zmq.socket(zmq.DEALER)
            z.setsockopt(zmq.LINGER, 0)
            curve_client(z, agent_keys[n], keys.public)
            z.connect(listen)
        # Every agent's batches at once: many agents' batches to a partition in one message.
        for seq in range(1, BATCHES + 1):
            for n in names:
                socks[n].send(AGENT.encode(wire.EventBatch(seq=seq, stream="s", events=events(n, seq))))
        for n in names:
            assert await replies(socks[n], {"s": BATCHES}) == {"s": BATCHES}, n
        total = AGENTS * BATCHES
        assert router["published"] == total
        assert 2 <= router["packs"] <= total // 4, router  # packed, not one message a batch
        await wait_for(lambda: writer["batches"] == total)
        assert writer["packs"] == router["packs"] and writer["duplicates"] == 0

        # A batch larger than JetStream takes is refused and counted at the router, not acknowledged.
        big = wire.EventBatch(seq=BATCHES + 1, stream="s", events=events(names[0], BATCHES + 1, n=3, pad=100))
        socks[names[0]].send(AGENT.encode(big))
        await wait_for(lambda: router.get("too_large_for_bus") == 1)
        assert await replies(socks[names[0]], {"s": BATCHES + 1}, timeout=1.0) == {}

        async with Bridge() as bridge:
            bus = await Bus.connect(bridge, nats_cluster.urls, "test")
            a, b = names[1], names[2]
            subject = f"{INGEST_SUBJECT}.{partition_of(a, 2)}"

            def batch(agent, seq):
                return CODEC.encode(Ingest(agent=agent, stream="s", seq=seq, events=events(agent, seq)))

            # Already stored, sent again in another pack with a new batch: the
            # store keeps the first copy only; a malformed batch in a pack
            # costs only itself; a message that is no pack at all is dropped;
            # a single batch, as a router without packing sends it, is stored.
            packs = [CODEC.encode(Packed(batches=[batch(a, BATCHES), batch(a, BATCHES + 1)])),
                     CODEC.encode(Packed(batches=[b"\x93junk", batch(a, BATCHES + 2)])),
                     b"\x92\x01\xc1",
                     batch(a, BATCHES + 3)]
            assert await bus.publish_to([(subject, p, "") for p in packs]) == [True] * 4
            await wait_for(lambda: writer["batches"] == total + 3)
            assert writer["duplicates"] == 1 and writer["undecodable"] == 2
            # A pack partly stored: its stored batch is passed on once, the
            # waiting one goes round again until its predecessor comes.
            packs = [CODEC.encode(Packed(batches=[batch(a, BATCHES + 4), batch(b, BATCHES + 2)])),
                     CODEC.encode(Packed(batches=[batch(b, BATCHES + 1)]))]
            assert await bus.publish_to([(f"{INGEST_SUBJECT}.{partition_of(b, 2)}", packs[0], "")]) == [True]
            await wait_for(lambda: writer["batches"] == total + 4 and writer["gaps"] >= 1)
            await bus.publish_to([(f"{INGEST_SUBJECT}.{partition_of(b, 2)}", packs[1], "")])
            await wait_for(lambda: writer["batches"] == total + 6)

            times, count = stored(db)
            assert count == len(times) == (total + 6) * EVENTS  # each event once
            # Detection got every stored batch once, packed.
            queue = await bus.consumer(DETECT_STREAM, DETECT_SUBJECT, SENTINELS)
            seen, messages = [], 0
            while taken := await queue.fetch(64, timeout=1.0):
                for d in taken:
                    got = unpack(CODEC, d.data)
                    assert got.packed and not got.bad
                    seen += [(x.agent, x.seq) for x, _ in got.batches]
                    # With what storing filled in, which rules and correlation read.
                    assert all(e.agent == x.agent for x, _ in got.batches for e in x.events)
                    messages += 1
                await queue.ack(taken)
            assert sorted(seen) == sorted(set(seen)) and len(seen) == total + 6
            assert messages < len(seen) // 4
            await bus.close()
        for z in socks.values():
            z.close()
        nursery.cancel_scope.cancel()
