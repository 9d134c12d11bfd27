"""One real process making one call, for the kernel tests.

    python _child.py [cgroup DIR] [drop UID GID] ACTION ARGS...

Prints a JSON line with its pid and ppid before acting, then (unless it
exec'd successfully) a JSON line with the outcome: {"errno": 0} or the errno
the call failed with.  Runs with -S: stdlib only."""

import json
import os
import socket
import sys


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


def endpoint(host: str, port: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port))


def act(action: str, args: list[str]) -> int:
    if action == "exec":
        os.execv(args[0], args)
    elif action in ("connect", "bind"):
        family, addr = endpoint(*args[:2])
        kind = socket.SOCK_DGRAM if args[2:] == ["udp"] else socket.SOCK_STREAM
        with socket.socket(family, kind) as s:
            s.settimeout(2)
            getattr(s, action)(addr)
    elif action == "sendto":
        family, addr = endpoint(*args[:2])
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", addr)
    elif action == "open":
        os.close(os.open(args[0], os.O_RDONLY))
    elif action == "setuid":
        os.setuid(int(args[0]))
    elif action == "setresgid":
        os.setresgid(*(int(a) for a in args))
    elif action == "fork":
        child = os.fork()
        if child == 0:
            os._exit(int(args[0]))
        _, status = os.waitpid(child, 0)
        say(child=child, status=status)
    else:
        raise SystemExit(f"unknown action {action}")
    return 0


def main(argv: list[str]) -> None:
    if argv[0] == "cgroup":
        with open(os.path.join(argv[1], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        argv = argv[2:]
    say(pid=os.getpid(), ppid=os.getppid())
    try:
        if argv[0] == "drop":
            os.setgid(int(argv[2]))
            os.setuid(int(argv[1]))
            argv = argv[3:]
        act(argv[0], argv[1:])
    except OSError as e:
        say(errno=e.errno)
        sys.exit(1)
    say(errno=0)


if __name__ == "__main__":
    main(sys.argv[1:])
