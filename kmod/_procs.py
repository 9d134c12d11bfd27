"""Process and system hooks (issue 12): ptrace, signals sent to protected
processes, BPF program loads, mounts, fileless execs.  Their kernel side is
``kmod/bpf/procs.bpf.h``; here: its records decoded into wire events, the
policy compiled into its ``procs_rules`` map, the verdict lines, and the
hooks this kernel cannot have.

"Protected" is the sensor's excluded pids: the agent and its family."""

from __future__ import annotations

import signal
import struct
from pathlib import Path

from wire import Bpf, Event, Mount, Ptrace, Signal

from ._decode import _HDR, K_BPF, K_MOUNTED, K_PTRACE, K_SIGNAL, _cstr
from ._policy import BPF_PROG_TYPES, Policy

BPF_TYPES = 64
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
_VERDICTS = ("allow", "audit", "block")
VERDICT_CODE = {"audit": 1, "block": 2}

# PTRACE_* requests (x86 among the arch-specific ones), without the prefix
PTRACE_REQUESTS = {
    0: "traceme", 1: "peektext", 2: "peekdata", 3: "peekuser", 4: "poketext", 5: "pokedata",
    6: "pokeuser", 7: "cont", 8: "kill", 9: "singlestep", 12: "getregs", 13: "setregs",
    14: "getfpregs", 15: "setfpregs", 16: "attach", 17: "detach", 18: "getfpxregs",
    19: "setfpxregs", 24: "syscall", 25: "get_thread_area", 26: "set_thread_area",
    30: "arch_prctl", 31: "sysemu", 32: "sysemu_singlestep", 33: "singleblock",
    0x4200: "setoptions", 0x4201: "geteventmsg", 0x4202: "getsiginfo", 0x4203: "setsiginfo",
    0x4204: "getregset", 0x4205: "setregset", 0x4206: "seize", 0x4207: "interrupt",
    0x4208: "listen", 0x4209: "peeksiginfo", 0x420A: "getsigmask", 0x420B: "setsigmask",
    0x420C: "seccomp_get_filter", 0x420D: "seccomp_get_metadata", 0x420E: "get_syscall_info",
    0x420F: "get_rseq_configuration", 0x4210: "set_syscall_user_dispatch_config",
    0x4211: "get_syscall_user_dispatch_config", 0x4212: "set_syscall_info",
}
# enum mount_call (sensor.h) and M_UMOUNT (procs.bpf.h)
MOUNT_CALLS = {1: "mount", 2: "move_mount", 3: "fsmount", 4: "mount_setattr", 6: "umount"}

_PTRACE = struct.Struct(_HDR + "qIi16sBB6x")
_SIGNAL = struct.Struct(_HDR + "IIi4x16s")
_BPF = struct.Struct(_HDR + "IIiB3x16s")
_MOUNTED = struct.Struct(_HDR + "IiQ256s256s32s")
_POLICY = struct.Struct(f"<5B3x{BPF_TYPES}B")  # struct procs_policy


def procs_config(policy: Policy) -> bytes:
    """The kernel's ``procs_rules`` entry: a verdict per hook (0: nothing to
    report), the first matching rule's in file order."""

    def code(rule) -> int:
        return VERDICT_CODE[rule.action] if rule else 0

    bpf = [code(policy.match_bpf(name)) for name in BPF_PROG_TYPES]
    other = code(policy.match_bpf(""))  # types this list does not name yet
    bpf += [other] * (BPF_TYPES - len(bpf))
    return _POLICY.pack(code(policy.match_ptrace(True)), code(policy.match_ptrace(False)),
                        code(policy.first("signal")), code(policy.first("mount")),
                        code(policy.match_fileless()), *bpf)


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"SIG{signo}"


def procs_decoders(d) -> dict:
    """Record decoders for ``Decoder`` ``d`` (kmod/_decode.py), by kind."""

    def ptrace(rec, at) -> Ptrace:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         request, target, result, target_comm, verdict, protected) = _PTRACE.unpack_from(rec, at)
        r = d._policy(gen).match_ptrace(bool(protected))
        ev = Ptrace(time=ts + d._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid, gid=gid,
                    comm=d._str(comm), cgroup=cgroup, request=PTRACE_REQUESTS.get(request, str(request)),
                    target_pid=target, target_comm=d._str(target_comm), result=result,
                    verdict=_VERDICTS[verdict] if verdict < 3 else "audit", rule=r.name if r else "")
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def signal_(rec, at) -> Signal | None:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         signo, target, result, target_comm) = _SIGNAL.unpack_from(rec, at)
        r = d._policy(gen).match_signal(signo)
        if r is None:
            return None
        ev = Signal(time=ts + d._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid, gid=gid,
                    comm=d._str(comm), cgroup=cgroup, signal=signo, target_pid=target,
                    target_comm=d._str(target_comm), result=result, verdict="audit", rule=r.name)
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def bpf(rec, at) -> Bpf:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         command, prog_type, result, verdict, name) = _BPF.unpack_from(rec, at)
        type_name = BPF_PROG_TYPES[prog_type] if prog_type < len(BPF_PROG_TYPES) else str(prog_type)
        r = d._policy(gen).match_bpf(type_name)
        ev = Bpf(time=ts + d._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid, gid=gid,
                 comm=d._str(comm), cgroup=cgroup, command="prog_load", prog_type=type_name,
                 prog_name=_cstr(name), result=result,
                 verdict=_VERDICTS[verdict] if verdict < 3 else "audit", rule=r.name if r else "")
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    def mount(rec, at) -> Mount | None:
        (kind, flags, gen, pid, tid, ppid, uid, euid, gid, vpid, ts, cgroup, comm, mntns, pidns,
         call, result, mflags, source, target, fstype) = _MOUNTED.unpack_from(rec, at)
        target, fstype = _cstr(target), _cstr(fstype)
        r = d._policy(gen).match_mount(target, fstype)
        if r is None:
            return None
        ev = Mount(time=ts + d._offset, pid=pid, tid=tid, ppid=ppid, uid=uid, euid=euid, gid=gid,
                   comm=d._str(comm), cgroup=cgroup, call=MOUNT_CALLS.get(call, str(call)),
                   source=_cstr(source), target=target, fstype=fstype, flags=mflags & 0xFFFFFFFF,
                   result=result, verdict="audit", rule=r.name)
        ev.mntns, ev.pidns, ev.vpid = mntns, pidns, vpid
        return ev

    return {K_PTRACE: ptrace, K_SIGNAL: signal_, K_BPF: bpf, K_MOUNTED: mount}


def procs_what(event: Event) -> str | None:
    """The middle of a verdict line (after the tag, before the pid)."""
    if isinstance(event, Ptrace):
        return f"ptrace {event.request} {event.target_pid} ({event.target_comm})"
    if isinstance(event, Signal):
        return f"signal {signal_name(event.signal)} to {event.target_pid} ({event.target_comm})"
    if isinstance(event, Bpf):
        return f"bpf {event.command} {event.prog_type} {event.prog_name or '-'}"
    if isinstance(event, Mount):
        if event.call == "mount":
            return f"mount {event.source or '-'} on {event.target} type {event.fstype or '-'}"
        return f"{event.call} {event.target or event.source or event.fstype or '-'}"
    return None


# ---- hooks this kernel cannot have --------------------------------------------

_SYSCALL_EVENTS = Path("/sys/kernel/tracing/events/syscalls")


def hooks_off(events: Path = _SYSCALL_EVENTS, modules: Path = Path("/proc/modules")) -> dict[str, str]:
    """Hooks the sensor cannot attach on this kernel, with why."""
    off = {}
    if not modules.exists() and not (events / "sys_enter_finit_module").exists():
        off["module loading"] = ("this kernel has no module support (CONFIG_MODULES off: "
                                 "no init_module/finit_module calls to watch, and none can load)")
    return off


def hooks_off_line(off: dict[str, str]) -> str:
    return "; ".join(f"{hook}: {why}" for hook, why in off.items())

