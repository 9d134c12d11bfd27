"""File rules without the kernel: parsing, matching, what the kernel's
filters get, and decoding a record as kmod/bpf/files.bpf.h lays it out."""

import struct

import pytest

from kmod import Decoder, Policy, PolicyError, verdict_line
from kmod._decode import _HDR, COMP_LEN, COMP_MAX
from kmod._files import CAPABILITY_RULE, FP_DIR, FP_FILE, FP_TEXT, K_FILE, W_CAP, W_RULE, W_SETID, \
    FileFilters, op_bits
from kmod._policy import FILE_OPS
from wire import File


def policy(*rules: str) -> Policy:
    return Policy.parse("\n".join(f'[[rule]]\nhook = "file"\naction = "audit"\n{r}\n' for r in rules))


def test_a_file_rule_needs_a_path_and_known_ops():
    with pytest.raises(PolicyError, match="file rules need match.path"):
        policy('name = "x"')
    with pytest.raises(PolicyError, match=r"match.op: unknown delete \(known: rename, unlink"):
        policy('name = "x"\nmatch.path = "/etc/*"\nmatch.op = ["unlink", "delete"]')
    with pytest.raises(PolicyError, match="match.container_image: only exec, open, connect and bind rules select"):
        policy('name = "x"\nmatch.path = "/etc/*"\nmatch.container_image = "a"')
    with pytest.raises(PolicyError, match="must be absolute"):
        policy('name = "x"\nmatch.path = "**/.bash_history"')


def test_block_is_refused_with_the_missing_refusal_point():
    text = '[[rule]]\nname = "x"\nhook = "file"\naction = "block"\nmatch.path = "/etc/passwd"\n'
    with pytest.raises(PolicyError) as e:
        Policy.parse(text, "p.toml")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("p.toml: rule 'x': file rules can only audit: rename, unlink, link")


def test_match_file_by_op_path_and_source():
    p = policy('name = "logs"\nmatch.path = "/var/log/**"\nmatch.op = ["rename", "unlink"]',
               'name = "keys"\nmatch.path = "/home/*/.ssh/authorized_keys"')
    assert p.match_file("unlink", "/var/log/auth.log").name == "logs"
    assert p.match_file("chmod", "/var/log/auth.log") is None
    assert p.match_file("rename", "/tmp/x", "/var/log/wtmp").name == "logs"  # moved away
    assert p.match_file("chmod", "/home/bob/.ssh/authorized_keys").name == "keys"
    assert p.match_file("chmod", "/home/bob/.ssh/known_hosts") is None


def test_the_kernel_filters_are_a_superset_of_the_globs():
    p = policy('name = "a"\nmatch.path = ["/etc/passwd", "/etc/cron.d/**", "/home/*/.bash_history"]\n'
               'match.op = "unlink"',
               'name = "b"\nmatch.path = "/etc/"\nmatch.op = "rename"',
               'name = "c"\nmatch.path = "/etc/*.conf"\nmatch.op = "chmod"')
    f = FileFilters(p)
    unlink, rename, chmod = (1 << (FILE_OPS.index(o) + 1) for o in ("unlink", "rename", "chmod"))
    assert f.names == {".bash_history": unlink}
    # the longest prefix a path has carries the ops of the shorter ones ("/etc/")
    assert f.prefixes == {b"/etc/passwd\0": unlink | chmod, b"/etc/cron.d/": unlink | chmod,
                          b"/etc/\0": rename | chmod, b"/etc/": chmod}
    assert f.dirs == {"/etc": (unlink | rename | chmod, 0), "/etc/cron.d": (unlink, unlink)}
    assert op_bits(p.rules[0]) == unlink
    assert bin(op_bits(policy('name = "all"\nmatch.path = "/x"').rules[0])).count("1") == len(FILE_OPS)


def test_the_default_policy_watches_tampering():
    p = Policy.default()
    assert p.match_file("symlink", "/root/.bash_history", "/dev/null").name == "file-tamper-history"
    assert p.match_file("unlink", "/home/alice/.zsh_history").name == "file-tamper-history"
    assert p.match_file("unlink", "/var/log/auth.log").name == "file-tamper-logs"
    assert p.match_file("rename", "/etc/passwd", "/etc/passwd+").name == "file-accounts-and-persistence"
    assert p.match_file("chmod", "/etc/ld.so.preload").name == "file-accounts-and-persistence"
    assert p.match_file("unlink", "/root/.ssh/authorized_keys").name == "file-accounts-and-persistence"
    assert p.match_file("chmod", "/var/log/auth.log") is None
    assert p.match_file("unlink", "/home/alice/notes") is None


def _pathbuf(path: str) -> bytes:
    comps = [c.encode() for c in reversed(path.strip("/").split("/"))] if path != "/" else []
    body = b"".join(c.ljust(COMP_LEN, b"\0") for c in comps).ljust(COMP_MAX * COMP_LEN, b"\0")
    return struct.pack("<H6x", len(comps)) + body


def _file_path(how: int, text: str = "", directory: str = "/") -> bytes:
    return struct.pack("<BB6x", how, 0) + _pathbuf(directory) + text.encode().ljust(256, b"\0")


def record(op: str, why: int, path: bytes, source: bytes = _file_path(0), mode=0, owner=0xFFFFFFFF,
           group=0xFFFFFFFF, xattr=b"", result=0, pid=42) -> bytes:
    head = struct.pack(_HDR, K_FILE, 0, 0, pid, pid, 1, 0, 0, 0, pid, 10**9, 7, b"mv", 1, 2)
    body = struct.pack(f"<iBBHIII4x64s", result, FILE_OPS.index(op) + 1, why, 0, mode, owner, group, xattr)
    return head + body + path + source


def test_decoding_each_path_form():
    d = Decoder(policy('name = "logs"\nmatch.path = "/var/log/**"'), clock_offset_ns=0)
    ev = d.decode(record("rename", W_RULE, _file_path(FP_DIR, "../b", "/var/log/x"),
                         _file_path(FP_TEXT, "/var/log/a")))
    assert isinstance(ev, File)
    assert (ev.op, ev.path, ev.source, ev.rule, ev.verdict, ev.pid, ev.comm) == (
        "rename", "/var/log/b", "/var/log/a", "logs", "audit", 42, "mv")
    assert verdict_line(ev) == "IMMUNE: [AUDIT] rename /var/log/a -> /var/log/b (pid=42)"
    ev = d.decode(record("chown", W_RULE, _file_path(FP_FILE, "", "/var/log/syslog"), owner=0))
    assert (ev.path, ev.owner, ev.group, ev.mode) == ("/var/log/syslog", 0, -1, -1)
    # let through by the kernel's filter, but no glob matches
    assert d.decode(record("unlink", W_RULE, _file_path(FP_TEXT, "/var/lib/x"))) is None


def test_decoding_what_is_always_reported():
    d = Decoder(policy('name = "logs"\nmatch.path = "/var/log/**"'), clock_offset_ns=0)
    ev = d.decode(record("chmod", W_SETID, _file_path(FP_TEXT, "/usr/local/bin/x"), mode=0o4755))
    assert (ev.rule, ev.mode) == ("file-setid-bits", 0o4755)
    assert verdict_line(ev) == "IMMUNE: [AUDIT] chmod /usr/local/bin/x 4755 (pid=42)"
    ev = d.decode(record("setxattr", W_CAP, _file_path(FP_TEXT, "/x"), xattr=b"security.capability"))
    assert (ev.rule, ev.xattr) == (CAPABILITY_RULE.name, "security.capability")
    # a rule names it too: the rule's name wins
    ev = d.decode(record("chmod", W_SETID | W_RULE, _file_path(FP_TEXT, "/var/log/x"), mode=0o2755))
    assert ev.rule == "logs"


def test_symlink_targets_are_text():
    """A relative target is no path from the caller's cwd: matched only when absolute."""
    d = Decoder(policy('name = "logs"\nmatch.path = "/var/log/**"'), clock_offset_ns=0)
    ev = d.decode(record("symlink", W_RULE, _file_path(FP_TEXT, "/tmp/l"), _file_path(FP_TEXT, "/var/log/x")))
    assert (ev.path, ev.source, ev.rule) == ("/tmp/l", "/var/log/x", "logs")
    assert verdict_line(ev) == "IMMUNE: [AUDIT] symlink /tmp/l -> /var/log/x (pid=42)"
    assert d.decode(record("symlink", W_RULE, _file_path(FP_TEXT, "/tmp/l"),
                           _file_path(FP_TEXT, "var/log/x"))) is None


def test_file_events_are_enriched_as_the_others():
    import os
    import sys

    from agent import ProcessTable

    table = ProcessTable()
    table.seed()
    ev = File(pid=os.getpid(), ppid=os.getppid(), op="chmod", path="/usr/local/bin/x", mode=0o4755)
    table.enrich(ev)
    assert (ev.image, ev.cmdline) == (os.path.realpath(sys.executable), " ".join(sys.orig_argv))
    assert ev.parent_image == os.readlink(f"/proc/{os.getppid()}/exe") and ev.user
