"""Ports for tests to bind after the probing socket is closed.

Asking the kernel for port 0 and closing the socket hands out an ephemeral
port, which any outgoing connection on the machine may take before the
test binds it (seen in CI: "Address already in use"). These ports come
from below the ephemeral range, so no connect() can claim them, and each
is handed out once per test process.
"""
import itertools
import os
import socket


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_LOW = 10000
_HIGH = max(_LOW + 1000, _ephemeral_low())
# Start where another test process on the machine is unlikely to be.
_next = itertools.count(os.getpid() * 7919 % (_HIGH - _LOW))


def free_port() -> int:
    for _ in range(_HIGH - _LOW):
        port = _LOW + next(_next) % (_HIGH - _LOW)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {_LOW}-{_HIGH}")


def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"
