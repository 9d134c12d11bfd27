"""``immune-node``: the one launcher of SENTINEL IMMUNE."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable

import msgspec
import trio
import zmq

import actors
from actors import Node, Supervisor, decode_tap, query_status, setup_logging

from ._config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report to the user as one line, then exit non-zero."""


# -- running a node -------------------------------------------------------------


def run_node(name: str, tree: Supervisor, cfg: Config) -> int:
    """Run ``tree`` until SIGINT/SIGTERM, then stop it in reverse order."""
    setup_logging(cfg.node.log_level)
    log = actors.get_logger(name)
    node = Node(name, tree, cfg.run_dir)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    async for signum in signals:
                        actors.log_event(log, "node.signal", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                nursery.start_soon(on_signal)
                await node.run()
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* actors.NodeBusy as g:
        raise CliError(str(g.exceptions[0])) from None
    except* (actors.Escalation, actors.StartError) as g:
        raise CliError(f"{name} stopped: {g.exceptions[0]}") from None
    except* PermissionError as g:
        raise CliError(f"{name}: {g.exceptions[0]}") from None
    return EXIT_OK


def cmd_hive(args: argparse.Namespace, cfg: Config) -> int:
    from ._trees import hive_tree

    return run_node("hive", hive_tree(cfg), cfg)


def cmd_agent(args: argparse.Namespace, cfg: Config) -> int:
    from ._trees import agent_tree

    return run_node("agent", agent_tree(cfg), cfg)


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from ._trees import demo_tree

    return run_node("demo", demo_tree(cfg), cfg)


# -- looking at a running node ------------------------------------------------


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    try:
        st = query_status(cfg.run_dir, timeout=args.timeout)
    except actors.ActorError as e:
        raise CliError(str(e)) from None
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode(st) + b"\n")
        return EXIT_OK
    up = time.time() - st.started
    state = "ready" if st.ready else "starting"
    print(f"node {st.node} pid {st.pid} {state} up {up:.0f}s  taps offered {st.taps_offered} lost {st.taps_lost}")
    cols = ("ACTOR", "STATE", "PID", "IN", "OUT", "BYTES_IN", "BYTES_OUT", "BAD", "RESTARTS", "QUEUE", "LAST ERROR")
    rows = [cols] + [
        (a.name, a.state, str(a.pid or st.pid), str(a.msgs_in), str(a.msgs_out), str(a.bytes_in),
         str(a.bytes_out), str(a.malformed), str(a.restarts), str(a.queue_depth), a.last_error[:60])
        for a in st.actors
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return EXIT_OK


def cmd_tap(args: argparse.Namespace, cfg: Config) -> int:
    info_path = cfg.run_dir / "node.json"
    try:
        endpoint = msgspec.json.decode(info_path.read_bytes())["tap"]
    except (OSError, msgspec.DecodeError, KeyError):
        raise CliError(f"no node is running with {cfg.run_dir} (no {info_path.name})") from None
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    for topic in args.topics or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    last: dict[str, int] = {}
    lost = printed = 0
    out = sys.stdout.buffer
    enc = msgspec.json.Encoder()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    try:
        while args.count is None or printed < args.count:
            if not poller.poll(200):
                continue
            topic, seq, payload = decode_tap(sub.recv_multipart())
            gap = seq - last.get(topic, seq - 1) - 1
            last[topic] = seq
            if gap > 0:
                lost += gap
                print(f"tap: lost {gap} messages on {topic} (this watcher was too slow)", file=sys.stderr)
            try:
                body = msgspec.msgpack.decode(payload)
            except msgspec.DecodeError:
                body = {"undecodable": payload.hex()}
            if isinstance(body, list) and len(body) == 2 and isinstance(body[0], int):
                body = body[1]  # the versioned envelope
            out.write(enc.encode({"topic": topic, "seq": seq, "msg": body}) + b"\n")
            out.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return EXIT_OK
    finally:
        sub.close()
        if lost:
            print(f"tap: {lost} messages lost in all", file=sys.stderr)
    return EXIT_OK


# -- the parser ---------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Config], int]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="TOML configuration file (default: /etc/immune/immune.toml if it exists)")
    p.add_argument("--data", metavar="DIR",
                   help="folder where the node keeps its state (default: /var/lib/immune)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default: info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immune-node",
        description="SENTINEL IMMUNE: EDR/XDR/MDR for Linux servers. One launcher for the hive, "
                    "the agent, and the tools that look at them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Command, help: str, description: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        _common(p)
        p.set_defaults(fn=fn)
        return p

    p = add("hive", cmd_hive, "run the hive: receives agents' events, detects, responds")
    p.add_argument("--listen", metavar="ENDPOINT", help="where agents connect (default: tcp://0.0.0.0:7400)")

    p = add("agent", cmd_agent, "run the agent: the kernel sensor and the uplink to a hive")
    p.add_argument("--hive", metavar="ENDPOINT", help="the hive's endpoint (default: tcp://127.0.0.1:7400)")
    p.add_argument("--id", help="this agent's name at the hive (default: the host name)")
    p.add_argument("--scope", help="machine | cgroup:/path | netns:/run/netns/NAME (default: machine)")
    p.add_argument("--policy", metavar="FILE", help="sensor policy file (default: the built-in policy)")

    p = add("demo", cmd_demo, "run a hive and an agent in one node on this machine",
            "Run a hive and an agent in one node on this machine, with embedded SQLite, "
            "the default policy, rules and playbooks. The agent enrolls itself.")
    p.add_argument("--listen", metavar="ENDPOINT", help="the hive's endpoint (default: tcp://127.0.0.1:7400)")

    p = add("tap", cmd_tap, "print a running node's messages as JSON lines",
            "Print the decoded messages of a running node as JSON lines until interrupted. "
            "TOPIC is a prefix of an actor's name, e.g. 'agent.sensor'; none means all.")
    p.add_argument("topics", nargs="*", metavar="TOPIC")
    p.add_argument("--count", type=int, metavar="N", help="stop after N messages")

    p = add("status", cmd_status, "print each actor's state and statistics of a running node")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the node's answer")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    o: dict[str, object] = {"node_data": args.data, "node_log_level": args.log_level}
    if args.command in ("hive", "demo"):
        o["hive_listen"] = args.listen
    if args.command == "agent":
        o.update(agent_hive=args.hive, agent_id=args.id, sensor_scope=args.scope, sensor_policy=args.policy)
    return o


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, **_overrides(args))
        return args.fn(args, cfg)
    except (ConfigError, CliError) as e:
        print(f"immune-node: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

