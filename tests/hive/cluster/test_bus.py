"""The bus against a real three-server JetStream cluster on loopback."""

import trio

from hive.cluster import Bridge, ClusterError
from hive.cluster._bus import (DETECT_STREAM, DETECT_SUBJECT, INGEST_STREAM, INGEST_SUBJECT, LEASES_BUCKET,
                               SENTINELS, WRITERS, Bus)


async def _bus(bridge, cluster, name="t"):
    bus = await Bus.connect(bridge, cluster.urls, name)
    await bus.ensure()
    return bus


async def test_a_work_queue_gives_each_message_to_one_consumer_and_drops_resends(nats_cluster):
    async with Bridge() as bridge:
        bus = await _bus(bridge, nats_cluster)
        assert bus.replicas == 3
        items = [(f"batch {i}".encode(), f"a/s/{i}") for i in range(1, 201)]
        subject = INGEST_SUBJECT + ".0"
        assert await bus.publish(subject, items) == [True] * 200
        # A resend within the duplicate window: held already, not stored twice.
        assert await bus.publish(subject, items[:50]) == [True] * 50
        one, two = await bus.consumer(INGEST_STREAM, subject, WRITERS), \
            await bus.consumer(INGEST_STREAM, subject, WRITERS)
        seen: list[bytes] = []
        while True:
            a, b = await one.fetch(30, timeout=0.5), await two.fetch(30, timeout=0.5)
            if not a and not b:
                break
            seen += [d.data for d in a + b]
            await one.ack(a)
            await two.ack(b)
        assert sorted(seen) == sorted(d for d, _ in items)
        assert await bus.pending(INGEST_STREAM, WRITERS) == (0, 0)
        await bus.close()


async def test_a_message_handed_back_comes_again_and_a_dropped_one_never(nats_cluster):
    async with Bridge() as bridge:
        bus = await _bus(bridge, nats_cluster)
        await bus.publish(DETECT_SUBJECT, [(b"x", "x"), (b"y", "y")])
        c = await bus.consumer(DETECT_STREAM, DETECT_SUBJECT, SENTINELS)
        got = await c.fetch(10)
        assert [d.data for d in got] == [b"x", b"y"] and [d.redelivered for d in got] == [0, 0]
        await c.ack([], later=[got[0]], delay=0.1, drop=[got[1]])
        await trio.sleep(0.3)
        again = await c.fetch(10)
        assert [(d.data, d.redelivered) for d in again] == [(b"x", 1)]
        await c.ack(again)
        assert await c.fetch(10, timeout=0.3) == []
        await bus.close()


async def test_kv_writes_only_over_the_revision_read(nats_cluster):
    async with Bridge() as bridge:
        bus = await _bus(bridge, nats_cluster)
        await bus.ensure_bucket(LEASES_BUCKET, None)
        assert await bus.kv_get(LEASES_BUCKET, "p0") is None
        r1 = await bus.kv_put(LEASES_BUCKET, "p0", b"a", revision=0)
        assert r1 and await bus.kv_put(LEASES_BUCKET, "p0", b"b", revision=0) is None
        r2 = await bus.kv_put(LEASES_BUCKET, "p0", b"a2", revision=r1)
        assert r2 and r2 > r1
        assert await bus.kv_put(LEASES_BUCKET, "p0", b"stale", revision=r1) is None
        assert await bus.kv_get(LEASES_BUCKET, "p0") == (b"a2", r2)
        assert (await bus.kv_items(LEASES_BUCKET))["p0"] == (b"a2", r2)
        assert not await bus.kv_delete(LEASES_BUCKET, "p0", revision=r1)
        assert await bus.kv_delete(LEASES_BUCKET, "p0", revision=r2)
        assert await bus.kv_get(LEASES_BUCKET, "p0") is None
        assert await bus.kv_put(LEASES_BUCKET, "p0", b"c", revision=0)
        await bus.close()


async def test_kv_entries_lapse_after_the_buckets_ttl(nats_cluster):
    async with Bridge() as bridge:
        bus = await _bus(bridge, nats_cluster)
        await bus.ensure_bucket("lapse", 1.0)
        assert await bus.kv_put("lapse", "p.1", b"a", revision=0)
        assert await bus.kv_put("lapse", "p.1", b"b", revision=0) is None
        await trio.sleep(1.6)
        assert await bus.kv_get("lapse", "p.1") is None
        assert await bus.kv_put("lapse", "p.1", b"b", revision=0)
        await bus.close()


async def test_the_cluster_goes_on_when_a_server_is_killed(nats_cluster):
    async with Bridge() as bridge:
        bus = await _bus(bridge, nats_cluster)
        await bus.publish(INGEST_SUBJECT + ".1", [(b"before", "1")])
        nats_cluster.servers[0].kill()
        await trio.to_thread.run_sync(nats_cluster.wait_leader)
        with trio.fail_after(30):
            while not await bus.publish(INGEST_SUBJECT + ".1", [(b"after", "2")]) == [True]:
                await trio.sleep(0.2)
        # JetStream's API may time out while the cluster elects new leaders;
        # the hive's actors try again, as here.
        with trio.fail_after(30):
            while True:
                try:
                    c = await bus.consumer(INGEST_STREAM, INGEST_SUBJECT + ".1", WRITERS)
                    break
                except ClusterError:
                    await trio.sleep(0.5)
        got = []
        with trio.fail_after(30):
            while len(got) < 2:
                try:
                    got += await c.fetch(10)
                except ClusterError:
                    await trio.sleep(0.5)
        assert sorted(d.data for d in got) == [b"after", b"before"]
        await bus.close()
