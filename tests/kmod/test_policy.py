"""Policy parsing, matching and compilation: no kernel needed."""

import hashlib
import re
import struct

import pytest

from kmod import DEFAULT_POLICY, Policy, PolicyError
from kmod._policy import glob_regex, head_bit, literal_prefix


def parse(text: str) -> Policy:
    return Policy.parse(text, "test.toml")


def test_default_policy_loads_and_covers_the_seed():
    p = Policy.default()
    assert {r.hook for r in p.rules} == {"exec", "connect", "bind", "open", "setid", "fork", "file",
                                         "ptrace", "signal", "bpf", "mount"}
    assert p.match_exec("/tmp/test.sh").action == "block"
    assert p.match_exec("/dev/shm/x/y").name == "exec-from-temp"
    assert p.match_exec("/usr/bin/true") is None
    assert p.match_open("/etc/shadow").action == "audit"
    assert p.match_open("/etc/passwd") is None
    assert p.match_setid("setuid", 65534).name == "setid-change"
    assert p.match_fork().name == "process-fork"
    assert p.needs_exec_guard and not p.hashes_exec
    assert DEFAULT_POLICY.name == "default_policy.toml"


@pytest.mark.parametrize("pattern,path,ok", [
    ("/tmp/**", "/tmp/a/b/c", True),
    ("/tmp/**", "/tmp/x", True),
    ("/tmp/**", "/tmpx/y", False),
    ("/tmp/*", "/tmp/a/b", False),
    ("/tmp/*.sh", "/tmp/run.sh", True),
    ("/etc/shadow", "/etc/shadow", True),
    ("/etc/shadow", "/etc/shadow-", False),
    ("/etc/ssh/ssh_host_?sa_key", "/etc/ssh/ssh_host_rsa_key", True),
    ("/x/[ab]c", "/x/bc", True),
    ("/x/[!ab]c", "/x/bc", False),
    ("/x/a.b", "/x/aXb", False),
])
def test_globs(pattern, path, ok):
    assert bool(glob_regex(pattern).match(path)) is ok


def test_literal_prefix():
    assert literal_prefix("/etc/sudoers.d/*") == "/etc/sudoers.d/"
    assert literal_prefix("/etc/shadow") == "/etc/shadow"


@pytest.mark.parametrize("text,message", [
    ("[[rule]\n", "not valid TOML"),
    ("version = 2", "version 2 is not supported"),
    ("bogus = 1", "unknown top-level key"),
    ('[[rule]]\nname="a"\nhook="exec"\naction="block"\nmatch.path="/tmp/*"\nextra=1',
     "unknown key(s) extra"),
    ('[[rule]]\nname="a b"\nhook="exec"\naction="block"', "'name' must be"),
    ('[[rule]]\nname="a"\nhook="ioctl"\naction="block"', "'hook' must be one of"),
    ('[[rule]]\nname="a"\nhook="exec"\naction="kill"', "'action' must be block, audit or allow"),
    ('[[rule]]\nname="a"\nhook="connect"\naction="allow"', "only exec and open rules can allow"),
    ('[[rule]]\nname="a"\nhook="exec"\naction="allow"\nmatch.fileless=true', "a fileless image cannot be allowed"),
    ('[[rule]]\nname="a"\nhook="setid"\naction="block"', "setid can only be audited"),
    ('[[rule]]\nname="a"\nhook="exec"\naction="block"', "exec rules need match.path or sha256"),
    ('[[rule]]\nname="a"\nhook="exec"\naction="block"\nmatch.path="tmp/*"', "must be absolute"),
    ('[[rule]]\nname="a"\nhook="exec"\naction="block"\nmatch.sha256="abc"', "not a SHA-256"),
    ('[[rule]]\nname="a"\nhook="open"\naction="block"\nmatch.path="/srv/*/key"',
     "wildcard before its last component"),
    ('[[rule]]\nname="a"\nhook="connect"\naction="block"\nmatch.port=70000', "outside 1-65535"),
    ('[[rule]]\nname="a"\nhook="connect"\naction="block"\nmatch.port="1-5000"', "at most 1024"),
    ('[[rule]]\nname="a"\nhook="connect"\naction="block"\nmatch.address="10.0.0.300"',
     "does not appear to be an IPv4 or IPv6 network"),
    ('[[rule]]\nname="a"\nhook="connect"\naction="block"\nmatch.protocol="sctp"',
     "protocol must be tcp or udp"),
    ('[[rule]]\nname="a"\nhook="connect"\naction="block"\nmatch.path="/x"',
     "connect rules do not match on path"),
    ('[[rule]]\nname="a"\nhook="setid"\naction="audit"\nmatch.call="setuidx"', "match.call: unknown setuidx"),
    ('[[rule]]\nname="a"\nhook="fork"\naction="audit"\n[[rule]]\nname="a"\nhook="fork"\n'
     'action="audit"', "two rules are named 'a'"),
])
def test_bad_policies_say_what_is_wrong(text, message):
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert message in str(info.value)
    assert "test.toml" in str(info.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        Policy.load(tmp_path / "missing.toml")


def test_first_matching_rule_wins_and_digest_is_lazy():
    p = parse('''
[[rule]]
name = "allow-audit-opt"
hook = "exec"
action = "audit"
match.path = "/opt/**"
[[rule]]
name = "bad-hash"
hook = "exec"
action = "block"
match.sha256 = "''' + "a" * 64 + '''"
''')
    calls = []

    def digest():
        calls.append(1)
        return "a" * 64

    assert p.match_exec("/opt/tool", digest).name == "allow-audit-opt"
    assert calls == []
    assert p.match_exec("/usr/bin/x", digest).name == "bad-hash"
    assert calls == [1]
    assert p.match_exec("/usr/bin/x", lambda: "b" * 64) is None
    assert p.match_exec("/usr/bin/x", digest, with_hash=False) is None
    assert p.hashes_exec and p.needs_exec_guard


def test_open_dirs_for_relative_paths():
    p = parse('[[rule]]\nname="a"\nhook="open"\naction="audit"\nmatch.path=['
              '"/etc/shadow", "/etc/cron.d/**", "/dev/nvidia*", "/srv/*/keys", "/etc/sudoers.d/*"]')
    assert p.open_dirs() == {"/etc": (1, {"shadow"}), "/etc/cron.d": (3, set()), "/dev": (2, set()),
                             "/srv": (3, set()), "/etc/sudoers.d": (2, set())}
    mixed = parse('[[rule]]\nname="a"\nhook="open"\naction="audit"\nmatch.path=['
                  '"/etc/shadow", "/etc/*.conf"]')
    assert mixed.open_dirs() == {"/etc": (2, set())}  # any file there: the names do not matter


def test_setid_match_on_call_and_id():
    p = parse('[[rule]]\nname="to-root"\nhook="setid"\naction="audit"\n'
              'match.call=["setuid","setresuid"]\nmatch.id=0')
    assert p.match_setid("setuid", 0).name == "to-root"
    assert p.match_setid("setuid", 1000) is None
    assert p.match_setid("setgid", 0) is None


def test_open_prefixes_end_whole_paths_with_nul():
    p = Policy.default()
    prefixes = p.open_prefixes()
    assert prefixes[b"/etc/shadow\0"] == prefixes[b"/etc/sudoers.d/"]
    assert b"/etc/shadow" not in prefixes


def test_open_marks(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    p = parse(f'''
[[rule]]
name = "keys"
hook = "open"
action = "block"
match.path = ["{secret}", "{tmp_path}/later", "{tmp_path}/keys/*.pem"]
[[rule]]
name = "watch"
hook = "open"
action = "audit"
match.path = "/etc/**"
''')
    assert sorted(p.open_marks()) == sorted([
        (str(secret), False), (str(tmp_path), True), (f"{tmp_path}/keys", True)])


def test_sock_entries_layout():
    p = parse('''
[[rule]]
name = "c2"
hook = "connect"
action = "block"
match.address = ["127.0.0.1", "fd00::/8"]
match.port = [4444, "5000-5001"]
match.protocol = "tcp"
[[rule]]
name = "shadowed"
hook = "connect"
action = "audit"
match.address = "127.0.0.1"
match.port = 4444
match.protocol = "tcp"
[[rule]]
name = "any-bind"
hook = "bind"
action = "audit"
''')
    v4, v6 = p.sock_entries(generation=3)
    tag0 = struct.pack("<I", 0)
    key = struct.pack("<I", 96) + tag0 + bytes([1, 6]) + (4444).to_bytes(2, "big") + bytes([127, 0, 0, 1])
    assert struct.unpack("<II", v4[key]) == (3 << 16 | 0, 2)  # the first rule wins
    assert len(v4) == 3 + 1 and len(v6) == 3 + 1
    any_bind = struct.pack("<I", 64) + tag0 + bytes([2, 0, 0, 0]) + bytes(4)
    assert struct.unpack("<II", v4[any_bind]) == (3 << 16 | 2, 1)
    key6 = struct.pack("<I", 64 + 8) + tag0 + bytes([1, 6]) + (5001).to_bytes(2, "big") + \
        bytes([0xfd]) + bytes(15)
    assert key6 in v6


def test_sock_entries_of_workloads_keep_the_policy_order():
    """Under a workload's tag: its own rules and everyone's, first match
    winning across both; tag 0 holds everyone's only."""
    p = parse('''
[[rule]]
name = "everyone-first"
hook = "connect"
action = "audit"
match.address = "10.0.0.1"
[[rule]]
name = "model-block"
hook = "connect"
action = "block"
match.address = ["10.0.0.0/8"]
match.cgroup = "/system.slice/model.service"
[[rule]]
name = "web-block"
hook = "connect"
action = "block"
match.address = "10.0.0.0/8"
match.cgroup = "/system.slice/web.service"
match.container_image = "nginx"
''')
    assert p.sock_selectors() == ((("/system.slice/model.service",), None),
                                  (("/system.slice/web.service",), p.rules[2].containers))
    assert p.sock_workloads("/system.slice/model.service/sub", lambda: None) == {0}
    assert p.sock_workloads("/system.slice/model.serviceX", lambda: None) == frozenset()
    assert p.sock_workloads("/system.slice/web.service", lambda: None) == frozenset()  # no container
    v4, _ = p.sock_entries(generation=0, tags={7: frozenset({0})})

    def key(tag: int, addr: bytes, prefix: int) -> bytes:
        return struct.pack("<II", 64 + prefix, tag) + bytes([1, 0, 0, 0]) + addr

    assert {k[4:8] for k in v4} == {struct.pack("<I", 0), struct.pack("<I", 7)}
    assert struct.unpack("<II", v4[key(0, bytes([10, 0, 0, 1]), 32)])[0] == 0
    assert key(0, bytes([10, 0, 0, 0]), 8) not in v4  # the workload's rule is not everyone's
    assert struct.unpack("<II", v4[key(7, bytes([10, 0, 0, 1]), 32)])[0] == 0  # the earlier rule still wins
    assert struct.unpack("<II", v4[key(7, bytes([10, 0, 0, 0]), 8)]) == (1, 2)


def test_open_heads_filter():
    heads = Policy.default().open_heads()
    words = struct.unpack(f"<{len(heads) // 8}Q", heads)

    def has(head: bytes) -> bool:
        bit = head_bit(head)
        return bool(words[bit >> 6] >> (bit & 63) & 1)

    assert has(b"/etc/sha") and has(b"/etc/sud") and has(b"/etc/mas")
    assert not has(b"/etc/hos") and not has(b"/usr/lib")
    short = Policy.parse('[[rule]]\nname="e"\nhook="open"\naction="audit"\nmatch.path="/e*"')
    assert short.open_heads() is None


DIGEST_RULES = '''
[[rule]]
name = "known-bad"
hook = "exec"
action = "block"
match.sha256 = "''' + "a" * 64 + '''"

[[rule]]
name = "from-opt"
hook = "exec"
action = "block"
match.path = "/opt/**"
'''


def test_guard_settings_default_and_parse():
    assert (Policy().guard.unhashed, Policy().guard.hash_max_mb) == ("allow", 64)
    assert Policy.default().guard == Policy().guard
    p = parse('[guard]\nunhashed = "block"\nhash_max_mb = 8\n' + DIGEST_RULES)
    assert (p.guard.unhashed, p.guard.hash_max_bytes) == ("block", 8 << 20)


@pytest.mark.parametrize("text,message", [
    ('guard = 1', "'guard' must be a table"),
    ('[guard]\nunhashed = "maybe"', "unhashed must be allow or block"),
    ('[guard]\nhash_max_mb = 0', "hash_max_mb must be a whole number"),
    ('[guard]\nhash_max_mb = 1.5', "hash_max_mb must be a whole number"),
    ('[guard]\nhash_max_mb = true', "hash_max_mb must be a whole number"),
    ('[guard]\nwait = 1', "[guard]: unknown key(s) wait"),
])
def test_bad_guard_settings_are_refused(text, message):
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse(text)


def test_an_unknown_digest_is_decided_by_the_setting():
    allow = parse(DIGEST_RULES)
    block = parse('[guard]\nunhashed = "block"\n' + DIGEST_RULES)
    assert allow.match_exec("/usr/bin/x", lambda: "a" * 64).name == "known-bad"
    assert block.match_exec("/usr/bin/x", lambda: "b" * 64) is None
    # not known: "allow" skips the digest rules, later rules still apply
    assert allow.match_exec("/usr/bin/x", lambda: None) is None
    assert allow.match_exec("/opt/x", lambda: None).name == "from-opt"
    assert block.match_exec("/usr/bin/x", lambda: None).name == "guard-unhashed"
    # the decoder never hashes: digest rules are skipped whatever the setting
    assert block.match_exec("/usr/bin/x", with_hash=False) is None


def test_an_unknown_digest_never_blocks_through_an_audit_rule():
    p = parse('[guard]\nunhashed = "block"\n' + DIGEST_RULES.replace('"block"', '"audit"', 1))
    assert p.match_exec("/usr/bin/x", lambda: None) is None


def test_digest_is_of_the_file_read(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(DIGEST_RULES.encode())
    assert Policy.load(path).digest == hashlib.sha256(DIGEST_RULES.encode()).hexdigest()
    assert Policy().digest == ""
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.load(path)


def test_an_allow_rule_lets_through_what_a_later_rule_refuses():
    p = parse('''
[[rule]]
name = "web-own"
hook = "exec"
action = "allow"
match.path = ["/usr/bin/python3*", "/usr/bin/gzip"]
[[rule]]
name = "web-rest"
hook = "exec"
action = "block"
match.path = "/**"
[[rule]]
name = "web-shadow-ok"
hook = "open"
action = "allow"
match.path = "/etc/shadow"
[[rule]]
name = "secrets"
hook = "open"
action = "block"
match.path = ["/etc/shadow", "/etc/gshadow"]
''')
    assert p.match_exec("/usr/bin/python3.12").action == "allow"
    assert p.match_exec("/usr/bin/dash").name == "web-rest"
    assert p.match_open("/etc/shadow").action == "allow"
    assert p.match_open("/etc/gshadow").name == "secrets"
    assert p.needs_exec_guard
    # only what blocks is marked: the files, and their folder for a file replaced by a rename
    assert sorted(m for m, _ in p.open_marks()) == ["/etc", "/etc/gshadow", "/etc/shadow"]
