"""CURVE encryption with ZAP authentication over real tcp sockets."""

import stat

import pytest
import trio
import zmq

from tests.ports import tcp_endpoint
from actors import Child, KeyFileError, KeyPair, Supervisor, curve_client, curve_server, zap_handler


def test_key_files_round_trip_with_a_private_secret(tmp_path):
    pair = KeyPair.generate()
    pair.save(tmp_path, "hive")
    assert stat.S_IMODE((tmp_path / "hive.key").stat().st_mode) == 0o600
    loaded = KeyPair.load(tmp_path, "hive")
    assert (loaded.public, loaded.secret) == (pair.public, pair.secret)
    (tmp_path / "hive.pub").write_text("short\n")
    with pytest.raises(KeyFileError, match="hive.pub: not a Z85 CURVE key"):
        KeyPair.load(tmp_path, "hive")
    with pytest.raises(KeyFileError, match="cannot read the agent key"):
        KeyPair.load(tmp_path, "agent")


async def _serve(runtime, root_ctx, endpoint, server, allowed, got, with_zap=True):
    async def router(ctx, *, task_status):
        d = ctx.duplex(zmq.ROUTER)
        curve_server(d.sock.zmq, server)
        d.sock.zmq.bind(endpoint)
        d.sock.copy = False
        async with trio.open_nursery() as n:
            await n.start(d.pump)
            task_status.started()
            while True:
                for ident, frame in await d.recv():
                    got.append((frame.get("User-Id"), frame.bytes))

    def authorize(public, address, domain):
        assert domain == "immune"
        return allowed.get(public)

    children = [Child("zap", zap_handler, args={"authorize": authorize})] if with_zap else []
    return Supervisor(children + [Child("router", router)])


def client(runtime, endpoint, keys, server_public):
    z = runtime.zmq.socket(zmq.DEALER)
    z.setsockopt(zmq.LINGER, 0)
    curve_client(z, keys, server_public)
    z.connect(endpoint)
    return z


async def test_only_enrolled_keys_get_through_and_carry_their_user_id(runtime, root_ctx):
    server, good, bad = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    endpoint = tcp_endpoint()
    got = []
    sup = await _serve(runtime, root_ctx, endpoint, server, {good.public: "agent-1"}, got)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        a = client(runtime, endpoint, good, server.public)
        b = client(runtime, endpoint, bad, server.public)
        a.send(b"hello from good")
        b.send(b"hello from bad")
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        await trio.sleep(0.3)
        n.cancel_scope.cancel()
    a.close()
    b.close()
    assert got == [("agent-1", b"hello from good")]
    zap = runtime.registry["t.zap"]
    assert zap.extra["accepted"] >= 1 and zap.extra["refused"] >= 1


async def test_without_a_zap_handler_nobody_gets_in(runtime, root_ctx):
    server, good = KeyPair.generate(), KeyPair.generate()
    endpoint = tcp_endpoint()
    got = []
    sup = await _serve(runtime, root_ctx, endpoint, server, {good.public: "agent-1"}, got, with_zap=False)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        a = client(runtime, endpoint, good, server.public)
        a.send(b"let me in")
        await trio.sleep(0.5)
        n.cancel_scope.cancel()
    a.close()
    assert got == []


async def test_a_client_pinning_the_wrong_server_key_gets_nowhere(runtime, root_ctx):
    server, impostor, good = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    endpoint = tcp_endpoint()
    got = []
    sup = await _serve(runtime, root_ctx, endpoint, server, {good.public: "agent-1"}, got)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        a = client(runtime, endpoint, good, impostor.public)
        a.send(b"secret")
        await trio.sleep(0.5)
        n.cancel_scope.cancel()
    a.close()
    assert got == []
