"""Taps: watchers see what they subscribe to, cost nothing otherwise, and a
stalled watcher never slows the pipeline."""

import msgspec
import trio
import zmq

from actors import Child, Codec, Supervisor, decode_tap


class Item(msgspec.Struct, tag="item"):
    n: int


def pipeline(count, sent_all):
    async def source(ctx, *, task_status):
        sock = ctx.socket(zmq.PUSH, connect="inproc://tap-pipe", codec=Codec(Item))
        task_status.started()
        for i in range(count):
            await sock.send(Item(i))
        sent_all.set()
        await trio.sleep_forever()

    async def sink(ctx, *, task_status, got):
        sock = ctx.socket(zmq.PULL, bind="inproc://tap-pipe", codec=Codec(Item))
        task_status.started()
        while True:
            got.extend(await sock.recv())

    return source, sink


async def serve_taps(nursery, runtime, tmp_path):
    endpoint = f"ipc://{tmp_path}/tap.sock"
    await nursery.start(runtime.taps.serve, runtime.zmq, endpoint)
    return endpoint


async def wait_for(predicate, timeout=10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_watcher_sees_only_its_topic(runtime, root_ctx, tmp_path):
    sent_all = trio.Event()
    got = []
    source, sink = pipeline(2000, sent_all)
    async with trio.open_nursery() as n:
        endpoint = await serve_taps(n, runtime, tmp_path)
        sub = runtime.zmq.socket(zmq.SUB)
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"t.src")
        await wait_for(lambda: runtime.taps.watched("t.src"))
        assert not runtime.taps.watched("t.sink") and not runtime.taps.watched("other")
        await n.start(Supervisor([Child("sink", sink, args={"got": got}), Child("src", source)]), root_ctx)
        await sent_all.wait()
        seen = []
        with trio.fail_after(10):
            while len(seen) < 2000:
                try:
                    seen.append(decode_tap(sub.recv_multipart(zmq.NOBLOCK)))
                except zmq.Again:
                    await trio.sleep(0.005)
        n.cancel_scope.cancel()
    sub.close()
    assert {topic for topic, _, _ in seen} == {"t.src"}
    assert [seq for _, seq, _ in seen] == list(range(1, 2001))
    assert msgspec.msgpack.decode(seen[5][2]) == [1, {"type": "item", "n": 5}]
    assert runtime.taps.offered == 2000  # the sink's stream is not watched: nothing offered


async def test_nothing_is_offered_when_nobody_watches(runtime, root_ctx, tmp_path):
    sent_all = trio.Event()
    got = []
    source, sink = pipeline(1000, sent_all)
    async with trio.open_nursery() as n:
        await serve_taps(n, runtime, tmp_path)
        await n.start(Supervisor([Child("sink", sink, args={"got": got}), Child("src", source)]), root_ctx)
        await sent_all.wait()
        n.cancel_scope.cancel()
    assert runtime.taps.offered == 0


async def test_stalled_watcher_does_not_slow_the_sender_and_counts_its_loss(runtime, root_ctx, tmp_path):
    count = 50_000
    sent_all = trio.Event()
    got = []
    source, sink = pipeline(count, sent_all)
    async with trio.open_nursery() as n:
        endpoint = await serve_taps(n, runtime, tmp_path)
        stalled = runtime.zmq.socket(zmq.SUB)
        stalled.setsockopt(zmq.RCVHWM, 10)
        stalled.connect(endpoint)
        stalled.setsockopt(zmq.SUBSCRIBE, b"t.")  # watches everything, reads nothing
        await wait_for(lambda: runtime.taps.watched("t.src"))
        await n.start(Supervisor([Child("sink", sink, args={"got": got}), Child("src", source)]), root_ctx)
        # If a watcher could block the pipeline, this would never finish.
        with trio.fail_after(30):
            await sent_all.wait()
            await wait_for(lambda: len(got) == count)
        await trio.sleep(0.2)
        seqs = []
        # The watcher wakes up and catches up with what was kept for it...
        with trio.fail_after(10):
            while not seqs or seqs[-1] <= count:
                try:
                    seqs.append(decode_tap(stalled.recv_multipart(zmq.NOBLOCK))[1])
                except zmq.Again:
                    # ...and once it is drained, the next message shows it the gap.
                    runtime.taps.offer("t.src", b"next")
                    await trio.sleep(0.05)
        n.cancel_scope.cancel()
    stalled.close()
    assert [i.n for i in got] == list(range(count))  # the pipeline lost nothing
    assert 0 < len(seqs) < count
    # The watcher knows what it lost from the sequence numbers.
    assert seqs == sorted(seqs)
    lost = seqs[-1] - len(seqs)
    assert lost > count // 2


async def test_a_process_childs_stream_reaches_the_nodes_watchers(tmp_path):
    from actors import Node, endpoints
    from tests.actors._children import chatter

    node = Node("n", Supervisor([Child("talker", chatter, process=True,
                                       args={"endpoint": f"ipc://{tmp_path}/sink.sock"})]), tmp_path / "run")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    seen = []
    async with trio.open_nursery() as n:
        await n.start(node.run)
        sub.connect(endpoints(tmp_path / "run")["tap"])
        sub.setsockopt(zmq.SUBSCRIBE, b"n.talker")
        with trio.fail_after(15):
            while len(seen) < 3:
                try:
                    seen.append(decode_tap(sub.recv_multipart(zmq.NOBLOCK)))
                except zmq.Again:
                    await trio.sleep(0.02)
        pid = node.status().actors[-1].pid
        n.cancel_scope.cancel()
    sub.close()
    assert {topic for topic, _, _ in seen} == {"n.talker"}
    assert pid and pid != __import__("os").getpid()
    seqs = [seq for _, seq, _ in seen]
    assert seqs == sorted(seqs)
