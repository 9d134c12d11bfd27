"""Policy rules that select containers, as plain objects: a resolver over a
fake machine (tests.kmod.test_containers.Machine) says who runs where."""

from __future__ import annotations

import struct

import pytest

from kmod import ContainerIdentity, Decoder, Policy, PolicyError, Verdicts
from kmod._policy import ContainerSelector, image_forms
from tests.kmod.test_containers import CID, OTHER, Machine
from tests.kmod.test_decode import OFFSET, exec_rec, later, open_rec

RULES = """
[[rule]]
name = "vllm-exec-from-temp"
hook = "exec"
action = "block"
match.path = ["/tmp/**"]
match.container_image = "vllm/*"

[[rule]]
name = "jobs-shadow"
hook = "open"
action = "audit"
match.path = "/etc/shadow"
match.container_name = ["job-*", "batch"]
match.container_runtime = "runc"

[[rule]]
name = "everyone-shadow"
hook = "open"
action = "block"
match.path = "/etc/shadow"
"""


class World:
    """A host process, one in a vllm container (docker), one in an nginx one."""

    def __init__(self, machine: Machine):
        machine.file(f"var/lib/docker/containers/{CID}/config.v2.json",
                     {"Name": "/llm", "Config": {"Image": "vllm/vllm-openai:v0.6.0"}})
        machine.file(f"var/lib/docker/containers/{OTHER}/config.v2.json",
                     {"Name": "/web", "Config": {"Image": "nginx:1.27"}})
        machine.file("run/runc/job-7/state.json", {"config": {"labels": []}})
        self.host = machine.process("/system.slice/ssh.service")
        self.vllm = machine.process(f"/system.slice/docker-{CID}.scope")
        self.web = machine.process(f"/system.slice/docker-{OTHER}.scope")
        self.job = machine.process("/job-7")
        self.policy = Policy.parse(RULES, containers=machine.resolver())


@pytest.fixture
def world(tmp_path):
    return World(Machine(tmp_path))


def name(rule) -> str | None:
    return rule.name if rule else None


def test_exec_from_temp_is_refused_only_in_the_selected_image(world):
    p = world.policy
    assert name(p.match_exec("/tmp/x", pid=world.vllm)) == "vllm-exec-from-temp"
    assert p.match_exec("/tmp/x", pid=world.host) is None
    assert p.match_exec("/tmp/x", pid=world.web) is None
    assert p.match_exec("/tmp/x") is None  # no caller known: as on the host
    assert p.match_exec("/usr/bin/x", pid=world.vllm) is None


def test_a_verdict_that_depends_on_the_container_is_not_the_files(world):
    p = world.policy
    assert p.varies_by_container("exec", "/tmp/x") and p.varies_by_container("open", "/etc/shadow")
    assert not p.varies_by_container("exec", "/usr/bin/x")
    assert not p.varies_by_container("open", "/etc/passwd")


def test_open_rules_select_by_name_and_runtime_then_fall_through(world):
    p = world.policy
    assert name(p.match_open("/etc/shadow", pid=world.job)) == "jobs-shadow"
    assert name(p.match_open("/etc/shadow", pid=world.vllm)) == "everyone-shadow"  # a docker container
    assert name(p.match_open("/etc/shadow", pid=world.host)) == "everyone-shadow"


def test_the_resolver_is_asked_only_when_a_selecting_rule_matches_the_path(world):
    p = world.policy
    before = p.containers.statistics().lookups
    for _ in range(3):
        p.match_exec("/usr/bin/x", pid=world.vllm)
        p.match_open("/etc/passwd", pid=world.vllm)
    assert p.containers.statistics().lookups == before


def test_a_rule_without_a_selector_first_is_decided_by_path_alone():
    p = Policy.parse('[[rule]]\nname = "a"\nhook = "exec"\naction = "block"\nmatch.path = "/tmp/**"\n'
                     '[[rule]]\nname = "b"\nhook = "exec"\naction = "audit"\nmatch.path = "/tmp/**"\n'
                     'match.container_id = "*"\n')
    assert name(p.match_exec("/tmp/x", pid=1)) == "a" and not p.varies_by_container("exec", "/tmp/x")


def test_digest_and_container_rules_together(world, tmp_path):
    digest = "ab" * 32
    p = Policy.parse(f'''
[[rule]]
name = "bad-in-vllm"
hook = "exec"
action = "block"
match.sha256 = "{digest}"
match.container_image = "vllm/*"
''', containers=world.policy.containers)
    assert name(p.match_exec("/opt/x", lambda: digest, pid=world.vllm)) == "bad-in-vllm"
    assert p.match_exec("/opt/x", lambda: digest, pid=world.web) is None
    assert p.match_exec("/opt/x", lambda: "cd" * 32, pid=world.vllm) is None


@pytest.mark.parametrize("image, glob, hit", [
    ("vllm/vllm-openai:v0.6.0", "vllm/*", True),
    ("docker.io/vllm/vllm-openai:v0.6.0", "vllm/*", True),
    ("vllm/vllm-openai:v0.6.0", "docker.io/vllm/*", True),
    ("nginx:1.27", "docker.io/library/nginx:*", True),
    ("docker.io/library/nginx:1.27", "nginx*", True),
    ("quay.io/vllm/vllm:1", "vllm/*", False),
    ("quay.io/vllm/vllm:1", "quay.io/vllm/*", True),
    ("localhost:5000/vllm/x", "vllm/*", False),
    ("registry/vllm/x:1", "vllm/*", False),  # '*' stays within one component
    ("registry/vllm/x:1", "**/vllm/*", True),
    ("", "*", False),
])
def test_image_globs(image, glob, hit):
    sel = ContainerSelector.of(images=[glob])
    assert sel.matches(ContainerIdentity("c1", "docker", "n", image)) is hit


def test_image_forms():
    assert image_forms("nginx") == ("nginx", "docker.io/library/nginx")
    assert image_forms("docker.io/vllm/x:1") == ("docker.io/vllm/x:1", "vllm/x:1")
    assert image_forms("ghcr.io/a/b") == ("ghcr.io/a/b",)


def test_the_host_matches_no_selector():
    assert not ContainerSelector.of(ids=["*"]).matches(None)
    assert ContainerSelector.of(ids=["*"]).matches(ContainerIdentity("x"))


@pytest.mark.parametrize("hook, key, value, says", [
    ("connect", "container_runtime", '"dockerd"', "match.container_runtime: 'dockerd' is not a runtime"),
    ("bind", "container_id", '"a[b"', "match.container_id: glob 'a[b': '[' without a closing ']'"),
    ("setid", "container_name", '"x"', "match.container_name: only exec, open, connect and bind rules select "
                                       "workloads"),
    ("fork", "container_runtime", '"runc"', "match.container_runtime: only exec, open, connect and bind rules"),
    ("signal", "cgroup", '"/x.service"', "match.cgroup: only exec, open, connect and bind rules"),
    ("exec", "container_runtime", '"dockerd"', "match.container_runtime: 'dockerd' is not a runtime"),
    ("exec", "container_image", "5", "match.container_image: expected non-empty strings, got 5"),
    ("exec", "container_image", '[""]', "match.container_image: expected non-empty strings"),
    ("exec", "container_name", '"web[1"', "match.container_name: glob 'web[1': '[' without a closing ']'"),
])
def test_bad_selectors_are_refused_naming_the_key(hook, key, value, says):
    path = 'match.path = "/tmp/**"\n' if hook in ("exec", "open") else ""
    action = "audit" if hook in ("setid", "fork", "signal") else "block"
    text = f'[[rule]]\nname = "r"\nhook = "{hook}"\naction = "{action}"\n{path}match.{key} = {value}\n'
    with pytest.raises(PolicyError) as e:
        Policy.parse(text, "p.toml")
    assert says in str(e.value) and str(e.value).startswith("p.toml: rule 'r': ")


@pytest.mark.parametrize("value, says", [
    ('"system.slice/x.service"', "must be absolute from the cgroup2 root"),
    ('"/sys/fs/cgroup/system.slice/x.service"', "give the path from the cgroup2 mount ('/system.slice/x.service')"),
    ('"/"', "selects every process; leave match.cgroup out"),
    ('"/**"', "selects every process"),
    ('"/system.slice/"', "an empty path component"),
    ('"/system.slice//x"', "an empty path component"),
    ('"/system.slice/../x"', "'.' and '..' are not cgroup names"),
    ('"/x\\u0000y"', "cannot hold a NUL"),
    ('"/kubepods[.slice"', "match.cgroup: glob '/kubepods[.slice': '[' without a closing ']'"),
    ("7", "match.cgroup: expected non-empty strings, got 7"),
    ('[""]', "match.cgroup: expected non-empty strings"),
    ('{ a = 1 }', "match.cgroup: expected a value or a list, got dict"),
])
def test_bad_cgroup_selectors_are_refused_with_why(value, says):
    for hook in ("connect", "exec"):
        path = 'match.path = "/tmp/**"\n' if hook == "exec" else ""
        text = f'[[rule]]\nname = "r"\nhook = "{hook}"\naction = "block"\n{path}match.cgroup = {value}\n'
        with pytest.raises(PolicyError) as e:
            Policy.parse(text, "p.toml")
        assert says in str(e.value) and str(e.value).startswith("p.toml: rule 'r': "), str(e.value)


def test_a_cgroup_rule_selects_its_cgroup_and_those_below():
    p = Policy.parse('''
[[rule]]
name = "model-tmp"
hook = "exec"
action = "block"
match.path = "/tmp/**"
match.cgroup = ["/system.slice/model.service", "/kubepods.slice/*/pod-*"]
''')
    (r,) = p.rules
    assert r.match_cgroup("/system.slice/model.service") and r.match_cgroup("/system.slice/model.service/x/y")
    assert r.match_cgroup("/kubepods.slice/burstable/pod-1/c")
    assert not r.match_cgroup("/system.slice/model.service2") and not r.match_cgroup("/system.slice")
    assert not r.match_cgroup(None)


def unknown_cgroup(record: bytes) -> bytes:
    """The hand-made records all say cgroup 7; here each process is in its
    own, so say "not known" (0) and let the resolver read the fake /proc."""
    out = bytearray(record)
    struct.pack_into("<Q", out, 40, 0)  # the header's cgroup id (kmod/bpf/sensor.h)
    return bytes(out)


def test_the_decoder_audits_by_container(world):
    decoder = Decoder(world.policy, Verdicts(), clock_offset_ns=OFFSET)
    inside = decoder.decode(unknown_cgroup(open_rec("/etc/shadow", pid=world.job, ts=later())))
    assert (inside.cgroup, inside.verdict, inside.rule) == (0, "audit", "jobs-shadow")
    host = decoder.decode(unknown_cgroup(open_rec("/etc/shadow", pid=world.host, ts=later())))
    assert host.rule == "everyone-shadow"
    refused = decoder.decode(unknown_cgroup(exec_rec("/tmp/x", ["/tmp/x"], result=-1, exe="/tmp/x",
                                                     pid=world.vllm, ts=later())))
    assert (refused.verdict, refused.rule) == ("block", "vllm-exec-from-temp")
    ran = decoder.decode(unknown_cgroup(exec_rec("/tmp/x", ["/tmp/x"], exe="/tmp/x", pid=world.host, ts=later())))
    assert (ran.verdict, ran.rule) == ("allow", "")
