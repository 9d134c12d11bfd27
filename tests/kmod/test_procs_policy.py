"""The process hooks' policy (ptrace, signal, bpf, mount, exec fileless),
what it compiles into for the kernel, and their records decoded: no kernel
needed.  Record layouts written out from kmod/bpf/procs.bpf.h."""

import struct

import pytest

from kmod import Decoder, Policy, PolicyError, Verdicts, verdict_line
from kmod._procs import hooks_off, procs_config
from wire import Bpf, Exec, Mount, Ptrace, Signal

from .test_decode import OFFSET, exec_rec, hdr


def parse(text: str) -> Policy:
    return Policy.parse(text, "test.toml")


def rule(hook: str, action: str = "audit", name: str = "r", **match) -> str:
    lines = [f'[[rule]]\nname = "{name}"\nhook = "{hook}"\naction = "{action}"']
    for key, value in match.items():
        text = "true" if value is True else repr(value).replace("'", '"')
        lines.append(f"match.{key} = {text}")
    return "\n".join(lines) + "\n"


def test_the_default_policy_blocks_ptrace_of_protected_and_fileless_and_audits_the_rest():
    p = Policy.default()
    assert p.match_ptrace(True).action == "block" and p.match_ptrace(False) is None
    assert p.match_fileless().action == "block"
    assert p.match_signal(19).action == p.match_bpf("kprobe").action == "audit"
    assert p.match_mount("/mnt", "tmpfs").action == "audit"
    # a fileless rule is no path rule: ordinary execs never meet it
    assert p.match_exec("/usr/bin/true") is None
    config = procs_config(p)
    assert config[:5] == bytes([2, 0, 1, 1, 2]) and set(config[8:]) == {1}


@pytest.mark.parametrize("hook", ["signal", "mount"])
def test_block_is_refused_for_audit_only_hooks(hook):
    with pytest.raises(PolicyError, match=f"{hook} can only be audited .*without an LSM hook"):
        parse(rule(hook, "block"))


@pytest.mark.parametrize("text,error", [
    (rule("ptrace", target="mine"), "match.target must be protected or any"),
    (rule("signal", signal="SIGNOPE"), "'SIGNOPE' is not a signal"),
    (rule("bpf", prog_type="kprobes"), "match.prog_type: unknown kprobes"),
    (rule("exec", fileless=True, path="/tmp/**"), "match.fileless is decided in the kernel"),
    (rule("exec", fileless="yes"), "match.fileless must be true"),
    (rule("mount", path="mnt"), "must be absolute"),
    (rule("bpf", path="/x"), "bpf rules do not match on path"),
    (rule("open", fileless=True), "open rules do not match on fileless"),
])
def test_bad_process_rules_are_refused_with_one_line(text, error):
    with pytest.raises(PolicyError, match=error) as e:
        parse(text)
    assert "\n" not in str(e.value)


def test_ptrace_targets():
    p = parse(rule("ptrace", "audit", "any", target="any") + rule("ptrace", "block", "prot"))
    assert p.match_ptrace(True).name == p.match_ptrace(False).name == "any"
    assert procs_config(p)[:2] == bytes([1, 1])  # the first rule wins, in file order
    p = parse(rule("ptrace", "block", "prot") + rule("ptrace", "audit", "any", target="any"))
    assert (p.match_ptrace(True).name, p.match_ptrace(False).name) == ("prot", "any")
    assert procs_config(p)[:2] == bytes([2, 1])
    assert procs_config(parse(rule("fork")))[:5] == bytes(5)  # nothing asked: nothing reported


def test_signals_by_name_or_number():
    p = parse(rule("signal", "audit", "stop", signal=["STOP", "SIGKILL", 15]))
    assert p.rules[0].signals == {19, 9, 15}
    assert p.match_signal(9).name == "stop" and p.match_signal(10) is None


def test_bpf_verdicts_by_program_type():
    p = parse(rule("bpf", "block", "no-kprobes", prog_type=["kprobe", "tracing"]) + rule("bpf", "audit", "all"))
    config = procs_config(p)[8:]
    assert (config[2], config[26], config[1], config[63]) == (2, 2, 1, 1)  # kprobe, tracing, socket_filter, other
    only = procs_config(parse(rule("bpf", "block", prog_type="xdp")))[8:]
    assert only[6] == 2 and only[63] == 0 and sum(only) == 2


def test_mount_rules_by_mount_point_and_type():
    p = parse(rule("mount", "audit", "proc", fstype="proc") + rule("mount", "audit", "mnt", path="/mnt/**"))
    assert p.match_mount("/anything", "proc").name == "proc"
    assert p.match_mount("/mnt/usb", "vfat").name == "mnt"
    assert p.match_mount("/srv", "tmpfs") is None
    assert procs_config(p)[3] == 1  # the kernel reports every mount; userspace matches


def test_hooks_off_says_why(tmp_path):
    events = tmp_path / "syscalls"
    events.mkdir()
    off = hooks_off(events, tmp_path / "modules")
    assert off["module loading"].startswith("this kernel has no module support")
    (tmp_path / "modules").write_text("")
    assert hooks_off(events, tmp_path / "modules") == {}


# ---- decoding ---------------------------------------------------------------------------

@pytest.fixture
def decoder():
    return Decoder(Policy.default(), Verdicts(), clock_offset_ns=OFFSET)


def test_ptrace_record(decoder):
    rec = hdr(10, pid=300, comm=b"gdb") + struct.pack("<qIi16sBB6x", 16, 42, 0, b"immune-node", 2, 1)
    ev = decoder.decode(rec)
    assert isinstance(ev, Ptrace)
    assert (ev.pid, ev.request, ev.target_pid, ev.target_comm, ev.verdict, ev.rule) == (
        300, "attach", 42, "immune-node", "block", "ptrace-protected")
    assert verdict_line(ev) == "IMMUNE: [BLOCKED] ptrace attach 42 (immune-node) (pid=300)"
    odd = decoder.decode(hdr(10) + struct.pack("<qIi16sBB6x", 0x7777, 42, -3, b"x", 1, 1))
    assert (odd.request, odd.result, odd.verdict) == ("30583", -3, "audit")


def test_signal_record(decoder):
    rec = hdr(11, pid=301, comm=b"kill") + struct.pack("<IIi4x16s", 19, 42, 0, b"immune-node")
    ev = decoder.decode(rec)
    assert isinstance(ev, Signal) and (ev.signal, ev.target_pid, ev.verdict) == (19, 42, "audit")
    assert verdict_line(ev) == "IMMUNE: [AUDIT] signal SIGSTOP to 42 (immune-node) (pid=301)"
    only_stop = Decoder(parse(rule("signal", signal="STOP")), Verdicts())
    assert only_stop.decode(hdr(11) + struct.pack("<IIi4x16s", 15, 42, 0, b"x")) is None


def test_bpf_record(decoder):
    rec = hdr(12, pid=302, comm=b"loader") + struct.pack("<IIiB3x16s", 5, 2, 7, 1, b"hide_pid")
    ev = decoder.decode(rec)
    assert isinstance(ev, Bpf)
    assert (ev.command, ev.prog_type, ev.prog_name, ev.result, ev.verdict, ev.rule) == (
        "prog_load", "kprobe", "hide_pid", 7, "audit", "bpf-load")
    assert verdict_line(ev) == "IMMUNE: [AUDIT] bpf prog_load kprobe hide_pid (pid=302)"
    future = decoder.decode(hdr(12) + struct.pack("<IIiB3x16s", 5, 40, -22, 1, b""))
    assert future.prog_type == "40" and verdict_line(future).endswith("bpf prog_load 40 - (pid=100)")


def mounted(call, source=b"", target=b"", fstype=b"", flags=0, result=0):
    return hdr(13, pid=303, comm=b"mount") + struct.pack("<IiQ256s256s32s", call, result, flags,
                                                         source, target, fstype)


def test_mount_records(decoder):
    ev = decoder.decode(mounted(1, b"/dev/sdb1", b"/mnt/usb", b"vfat", 6))
    assert isinstance(ev, Mount)
    assert (ev.call, ev.source, ev.target, ev.fstype, ev.flags) == ("mount", "/dev/sdb1", "/mnt/usb", "vfat", 6)
    assert verdict_line(ev) == "IMMUNE: [AUDIT] mount /dev/sdb1 on /mnt/usb type vfat (pid=303)"
    ev = decoder.decode(mounted(6, target=b"/mnt/usb", flags=2))
    assert (ev.call, ev.flags, verdict_line(ev)) == ("umount", 2, "IMMUNE: [AUDIT] umount /mnt/usb (pid=303)")
    ev = decoder.decode(mounted(3, source=b"none", fstype=b"tmpfs", result=5))
    assert verdict_line(ev) == "IMMUNE: [AUDIT] fsmount none (pid=303)"
    picky = Decoder(parse(rule("mount", path="/mnt/**")), Verdicts())
    assert picky.decode(mounted(1, b"x", b"/srv/x", b"tmpfs")) is None


def test_fileless_exec_records(decoder):
    ev = decoder.decode(exec_rec("/proc/self/fd/3", ["x"], exe="/memfd:payload", flags=128))
    assert isinstance(ev, Exec)
    assert (ev.fileless, ev.exe, ev.verdict, ev.rule) == (True, "/memfd:payload", "block", "exec-fileless")
    assert verdict_line(ev) == "IMMUNE: [BLOCKED] exec /proc/self/fd/3 (pid=100)"
    ev = decoder.decode(exec_rec("/dev/fd/4", ["x"], exe="/srv/app/tool", flags=128))
    assert (ev.fileless, ev.exe) == (True, "/srv/app/tool (deleted)")
    ev = decoder.decode(exec_rec("/usr/bin/x", ["x"]))
    assert (ev.fileless, ev.verdict) == (False, "allow")
    audit = Decoder(parse(rule("exec", "audit", "fl", fileless=True)), Verdicts())
    ev = audit.decode(exec_rec("/proc/self/fd/3", ["x"], exe="/memfd:payload", flags=128))
    assert (ev.verdict, ev.rule) == ("audit", "fl")
