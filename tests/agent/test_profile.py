"""Learned self: profiles as plain objects, without sockets or a kernel."""

from __future__ import annotations

import msgspec
import pytest

import wire
from agent._profile import (
    LEVEL,
    Learner,
    Learning,
    Profile,
    Profiles,
    ProfileSettings,
    ProfileStore,
    argument_shape,
    decode_profile,
    generalise_path,
    items_of,
    workload_of,
)

SVC = dict(unit="web.service", cgroup=77, agent="a1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(n: int = 0) -> list[wire.Event]:
    """One run of a small web service: the same work, fresh pids and names."""
    pid = 1000 + n * 10
    return [
        wire.Exec(pid=pid, exe="/usr/bin/python3.12", parent_image="/usr/lib/systemd/systemd",
                  argv=["python3", "/srv/web/app.py", "--port", "8080", f"--run={n}"], **SVC),
        wire.Open(pid=pid, path="/srv/web/app.py", flags=0, **SVC),
        wire.Open(pid=pid, path=f"/proc/{pid}/status", flags=0, **SVC),
        wire.Open(pid=pid, path=f"/tmp/tmp{n}x8k2q1z/upload", flags=0o101, **SVC),
        wire.Open(pid=pid, path="/var/log/web/access.log", flags=0o2101, **SVC),
        wire.Bind(pid=pid, protocol="tcp", address="0.0.0.0", port=8080, **SVC),
        wire.Connect(pid=pid, family=2, protocol="tcp", address="10.0.0.5", port=5432, **SVC),
        wire.SetId(pid=pid, call="setuid", old=0, new=33, **SVC),
        wire.Exec(pid=pid + 1, exe="/usr/bin/gzip", parent_image="/usr/bin/python3.12",
                  argv=["gzip", f"/var/log/web/access.log.{n + 1}"], **SVC),
    ]


def learned(clock: Clock, runs: int = 3, **kw) -> Profiles:
    p = Profiles("a1", ProfileSettings(learn=3600, stable=600, **kw), clock=clock)
    for n in range(runs):
        assert p.observe(run(n)) == run(n)  # nothing but the events while learning
        clock.now += 60
    clock.now += 3600
    p.tick()
    return p


def novelty(events: list[wire.Event]) -> list[wire.Edge]:
    return [e for e in events if type(e) is wire.Edge]


def test_generalised_paths_and_arguments():
    assert generalise_path("/proc/4242/status") == "/proc/*/status"
    assert generalise_path("/tmp/tmpa8f3kq9z/x") == "/tmp/**"
    assert generalise_path("/var/lib/docker/3f2a9c0d11bb/config.json") == "/var/lib/docker/*/config.json"
    assert generalise_path("/usr/lib/x86_64-linux-gnu/libssl.so.3") == "/usr/lib/x86_64-linux-gnu/libssl.so.N"
    assert generalise_path("/etc/nginx/nginx.conf") == "/etc/nginx/nginx.conf"
    assert generalise_path("/data/q/50ba549f2a738cb31b3215cd01ec635f.json") == "/data/q/*.json"
    assert generalise_path("/backup/db-20231116.tgz") == "/backup/db-N.tgz"
    assert generalise_path("/srv/models/llama-7b/w.bin") == "/srv/models/llama-7b/w.bin"
    assert argument_shape(["sleep", "30"]) == "N"
    assert argument_shape(["git", "show", "9fceb02d0ae598e95dc970b74767f19372d61af8"]) == "show H"
    assert argument_shape(["x", "--out=/tmp/abc123/f", "-v"]) == "--out=/tmp/** -v"


def test_workloads_services_containers_cgroups_not_sessions():
    assert workload_of(wire.Exec(unit="nginx.service", cgroup=5)) == "unit:nginx.service"
    assert workload_of(wire.Exec(container="ab" * 32, container_image="vllm/vllm:1", unit="docker-x.scope")) \
        == "image:vllm/vllm:1"
    assert workload_of(wire.Exec(unit="session-3.scope", cgroup=9)) == ""
    assert workload_of(wire.Exec(unit="user@1000.service", cgroup=9)) == ""
    assert workload_of(wire.Exec(cgroup=9)) == "cgroup:9"
    assert workload_of(wire.Exec(cgroup=9), cgroups=False) == ""


def test_items_of_each_kind():
    assert items_of(wire.Open(path="/etc/passwd", flags=0)) == ["read\t/etc/passwd"]
    assert items_of(wire.Open(path="/var/x.log", flags=0o1)) == ["write\t/var/x.log"]
    assert items_of(wire.Connect(family=2, address="1.2.3.4", port=443)) == ["connect\ttcp\t1.2.3.4\t443"]
    assert items_of(wire.Bind(port=0)) == []
    assert items_of(wire.SetId(call="setresuid", new=65534)) == ["setuid\t65534"]
    assert items_of(wire.SetId(call="setgid", new=0)) == []
    assert items_of(wire.Exec(exe="/bin/ls", result=-13)) == []


def test_second_benign_run_raises_nothing():
    clock = Clock()
    p = learned(clock)
    assert p.learners["unit:web.service"].p.state == "stable"
    for n in range(3, 40):
        assert novelty(p.observe(run(n))) == [], n
        clock.now += 60
    assert p.novel == 0


def test_learning_is_not_stable_before_its_period_and_quiet():
    clock = Clock()
    p = Profiles("a1", ProfileSettings(learn=3600, stable=600), clock=clock)
    p.observe(run(0))
    clock.now += 3599
    p.tick()
    assert p.learners["unit:web.service"].p.state == "learning"
    p.observe([wire.Open(path="/srv/web/new.py", **SVC)])  # novelty while learning: learned, restarts the quiet
    clock.now += 300
    p.tick()
    assert p.learners["unit:web.service"].p.state == "learning"
    clock.now += 301
    p.tick()
    assert p.learners["unit:web.service"].p.state == "stable"


def test_attacks_on_a_stable_service_are_novel_with_technique_and_what_was_held():
    clock = Clock()
    p = learned(clock)
    shell = wire.Exec(pid=5000, exe="/usr/bin/dash", parent_image="/usr/bin/python3.12", argv=["sh", "-i"],
                      time=42, **SVC)
    c2 = wire.Connect(pid=5000, family=2, address="203.0.113.9", port=4444, **SVC)
    shadow = wire.Open(pid=5000, path="/etc/shadow", flags=0, **SVC)
    out = p.observe([shell, c2, shadow])
    alerts = novelty(out)
    assert out[0] is shell and out[1] is alerts[0]  # each right behind its event
    assert [a.rule_id for a in alerts] == ["profile.exec", "profile.connect", "profile.read"]
    assert [a.tags[0] for a in alerts] == ["attack.t1059", "attack.t1071", "attack.t1552.001"]
    assert all(a.level == LEVEL and a.workload == "unit:web.service" and a.verdict == "audit" for a in alerts)
    assert alerts[0].pid == 5000 and alerts[0].time == 42
    assert "exec /usr/bin/dash" in alerts[0].detail and "exec /usr/bin/gzip" in alerts[0].detail
    assert "connect tcp 10.0.0.5:5432" in alerts[1].detail
    assert alerts[0].novel == ["exec\t/usr/bin/dash\t/usr/bin/python3.12\t-i"]
    # the same novelty again within the realert period: no second alert
    assert novelty(p.observe([shell, c2, shadow])) == []
    clock.now += 3601
    assert len(novelty(p.observe([shadow]))) == 1


def test_accept_puts_the_novelty_into_the_profile():
    clock = Clock()
    p = learned(clock)
    c = wire.Connect(family=2, address="10.0.0.6", port=5432, **SVC)
    [alert] = novelty(p.observe([c]))
    assert p.accept(alert.workload, alert.novel).startswith("unit:web.service: 1 item(s) accepted")
    clock.now += 7200
    assert novelty(p.observe([c])) == []
    with pytest.raises(ValueError, match="no profile"):
        p.accept("unit:none.service", alert.novel)
    with pytest.raises(ValueError, match="not a profile item"):
        p.accept(alert.workload, ["rm -rf /"])


def test_folders_with_many_children_become_a_glob_but_secrets_never_do():
    lr = Learner(Profile(workload="w"), folder_cap=4)
    for i in "abcdef":
        lr.add(f"read\t/srv/app/static/{i}.css")
    assert lr.sets["read"] == {"read\t/srv/app/static/**"}
    assert lr.holds("read\t/srv/app/static/new/x.js")
    for name in ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "localtime"):
        lr.add(f"read\t/etc/{name}")
    assert not lr.holds("read\t/etc/shadow")  # /etc is never globbed
    for i in range(6):
        lr.add(f"read\t/home/u/.ssh/k{i}.pub")
    lr.add("read\t/home/u/.ssh/other")
    assert not lr.holds("read\t/home/u/.ssh/id_rsa")


def test_many_peers_become_a_network_then_any_address():
    lr = Learner(Profile(workload="w"), peer_cap=3)
    for i in range(5):
        lr.add(f"connect\ttcp\t10.1.2.{i}\t443")
    assert lr.sets["connect"] == {"connect\ttcp\t10.1.2.0/24\t443"}
    assert lr.holds("connect\ttcp\t10.1.2.200\t443")
    assert not lr.holds("connect\ttcp\t10.1.3.1\t443")
    assert not lr.holds("connect\ttcp\t10.1.2.1\t22")
    for i in range(14):
        lr.add(f"connect\ttcp\t10.9.{i}.1\t443")
    assert lr.holds("connect\ttcp\t192.0.2.1\t443")


def test_many_argument_shapes_become_any():
    lr = Learner(Profile(workload="w"), shape_cap=16)
    for i in range(17):
        lr.add(f"exec\t/bin/tool\t/bin/sh\tsub{chr(97 + i)}")
    assert lr.holds("exec\t/bin/tool\t/bin/sh\tanything")
    assert not lr.holds("exec\t/bin/tool\t/bin/bash\tsuba")


def test_workload_and_item_caps():
    clock = Clock()
    p = Profiles("a1", ProfileSettings(max_workloads=2, max_items=3), clock=clock)
    for cg in (1, 2, 3):
        p.observe([wire.Open(path="/x", cgroup=cg)])
    assert len(p.learners) == 2 and p.refused == 1
    p.observe([wire.Open(path=f"/srv/{i}", cgroup=1) for i in "abcdef"])
    assert p.learners["cgroup:1"].size() == 3


def test_profiles_kept_on_disk_and_uploaded(tmp_path):
    clock = Clock()
    p = learned(clock)
    events = p.tick()
    assert events == []  # uploaded by the tick that made it stable
    clock.now += 61
    p.accept("unit:web.service", [], "enforcing")
    [ev] = p.tick()
    assert type(ev) is wire.Profile and ev.state == "enforcing" and ev.workload == "unit:web.service"
    assert p.tick() == []
    clock.now += 86400  # unchanged for a day: sent again, for the hive's retention
    assert [e.revision for e in p.tick()] == [ev.revision] and p.tick() == []
    body = decode_profile(ev.body)
    assert body.state == "enforcing" and "bind\ttcp\t0.0.0.0\t8080" in body.items["bind"]
    # through the wire's own codec, as the hive decodes it
    batch = msgspec.msgpack.decode(msgspec.msgpack.encode(wire.EventBatch(seq=1, events=[ev])),
                                   type=wire.AgentMessage)
    assert decode_profile(batch.events[0].body) == body
    store = ProfileStore(tmp_path / "profiles")
    store.save(p.take_dirty())
    [back], bad = store.load()
    assert bad == [] and back == body
    again = Profiles("a1", ProfileSettings(learn=3600, stable=600), clock=clock, profiles=[back])
    assert novelty(again.observe(run(9))) == []
    assert len(novelty(again.observe([wire.Connect(family=2, address="198.51.100.1", port=80, **SVC)]))) == 1


def test_a_bad_file_is_set_aside(tmp_path):
    (tmp_path / "x.profile").write_bytes(b"\x93garbage")
    lines = []
    ln = Learning("a1", tmp_path, log=lines.append)
    assert len(ln.profiles.learners) == 0 and "x.profile" in lines[0]
    assert (tmp_path / "x.bad").exists()


def test_update_command():
    clock = Clock()
    ln = Learning.__new__(Learning)
    ln.profiles = learned(clock)
    r = ln.update(wire.UpdateProfile(id="c1", workload="unit:web.service", state="learning"))
    assert r.ok and "learning" in r.detail
    r = ln.update(wire.UpdateProfile(id="c2", workload="unit:nope", state="stable"))
    assert not r.ok and "no profile" in r.detail
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "update_profile", "id": "c3", "workload": "w"}, wire.UpdateProfile)


def test_a_workload_doing_ever_new_things_is_alerted_within_a_bound():
    from agent._profile import MAX_PENDING

    clock = Clock()
    p = learned(clock)
    flood = [wire.Connect(family=2, address=f"198.51.{i // 250}.{i % 250}", port=443, **SVC)
             for i in range(MAX_PENDING + 50)]
    assert len(novelty(p.observe(flood))) == MAX_PENDING and p.suppressed == 50
    fresh = wire.Connect(family=2, address="192.0.2.77", port=443, **SVC)
    assert novelty(p.observe([fresh])) == [] and p.suppressed == 51
    clock.now += 3601  # those alerted aged out: room again
    assert len(novelty(p.observe([fresh]))) == 1


def enforcing(clock: Clock, **kw) -> Profiles:
    p = learned(clock, **kw)
    p.accept("unit:web.service", [], "enforcing")
    return p


def test_enforcing_kills_what_its_proposed_policy_refuses_and_alerts_the_rest():
    clock = Clock()
    p = enforcing(clock)
    assert all(novelty(p.observe(run(n))) == [] for n in range(5)) and p.commands == []  # its own load: untouched
    shell = wire.Exec(pid=5000, exe="/usr/bin/dash", parent_image="/usr/bin/python3.12", argv=["sh"], **SVC)
    c2 = wire.Connect(pid=5001, family=2, address="203.0.113.9", port=4444, image="/usr/bin/python3.12", **SVC)
    ssh = wire.Bind(pid=5002, protocol="tcp", address="0.0.0.0", port=22, **SVC)
    shadow = wire.Open(pid=5003, path="/etc/shadow", flags=0, **SVC)
    # outside the profile but not what the proposal refuses: alerted, not killed
    other = [wire.Open(pid=5004, path="/srv/web/new.html", flags=0, **SVC),
             wire.SetId(pid=5005, call="setuid", old=33, new=0, **SVC),
             wire.Bind(pid=5006, protocol="tcp", address="0.0.0.0", port=9090, **SVC)]
    alerts = novelty(p.observe([shell, c2, ssh, shadow, *other]))
    assert len(alerts) == 7
    kills = {c.pid: c for c, _ in p.commands}
    assert sorted(kills) == [5000, 5001, 5002, 5003]
    assert kills[5000].tree and kills[5000].exe == "/usr/bin/dash"  # the shell and what it started
    assert not kills[5001].tree and kills[5001].exe == "/usr/bin/python3.12"
    assert kills[5002].exe == ""  # nothing known of its program: not checked
    assert [a for _, a in p.commands] == [a.alert for a in alerts[:4]]
    for a in alerts[:4]:
        assert a.detail.startswith(f"enforced: kill pid {a.pid}") and "new in unit:web.service (enforcing)" in a.detail
        [act] = a.actions
        assert act.action == "kill_process" and act.id == kills[a.pid].id and f'"pid":{a.pid}' in act.detail
    assert "and its children (/usr/bin/dash)" in alerts[0].detail
    assert all(not a.actions and not a.detail.startswith("enforced") for a in alerts[4:])
    assert p.statistics()["enforced_kills"] == 4
    # the same shell again (a respawn) within the realert period: killed again, and said;
    # the file read again: not alerted again, as in stable
    p.commands.clear()
    again = wire.Exec(pid=5100, exe="/usr/bin/dash", parent_image="/usr/bin/python3.12", argv=["sh"], **SVC)
    alerts = novelty(p.observe([again, other[0]]))
    assert [a.pid for a in alerts] == [5100] and [c.pid for c, _ in p.commands] == [5100]


def test_enforcing_does_not_kill_what_the_kernel_already_refused():
    clock = Clock()
    p = enforcing(clock)
    c2 = wire.Connect(pid=5001, family=2, address="203.0.113.9", port=4444, image="/usr/bin/python3.12",
                      verdict="block", **SVC)
    [alert] = novelty(p.observe([c2]))
    assert p.commands == [] and alert.actions == [] and not alert.detail.startswith("enforced")


def test_stable_and_enforce_action_alert_only_alert():
    for state, kw in (("stable", {}), ("enforcing", {"enforce_action": "alert"})):
        clock = Clock()
        p = learned(clock, **kw)
        p.accept("unit:web.service", [], state)
        shell = wire.Exec(pid=5000, exe="/usr/bin/dash", parent_image="/usr/bin/python3.12", argv=["sh"], **SVC)
        [alert] = novelty(p.observe([shell]))
        assert p.commands == [] and alert.actions == [] and not alert.detail.startswith("enforced"), state
    with pytest.raises(ValueError, match="enforce_action 'block': one of kill, alert"):
        Profiles("a1", ProfileSettings(enforce_action="block"))


def test_learning_hands_the_kills_over_and_reports_their_results(tmp_path):
    clock = Clock()
    lines: list[str] = []
    learning = Learning("a1", tmp_path, ProfileSettings(learn=3600, stable=600), clock=clock, log=lines.append)
    for n in range(3):
        assert learning.observe(run(n)) == (run(n), [])
        clock.now += 60
    clock.now += 3600
    learning.tick()
    assert learning.update(wire.UpdateProfile(id="c1", workload="unit:web.service", state="enforcing")).ok
    shell = wire.Exec(pid=5000, exe="/usr/bin/dash", parent_image="/usr/bin/python3.12", argv=["sh"], **SVC)
    events, [kill] = learning.observe([shell])
    [alert] = novelty(events)
    assert kill.pid == 5000 and learning.owns(kill.id) and learning.profiles.commands == []
    assert any(f"alert={alert.alert}" in line and "pid=5000" in line for line in lines)  # logged as the edge's
    done = learning.answered(wire.CommandResult(command=kill.id, ok=True, detail="killed 1 process(es): 5000"))
    assert done.answered and done.alert == alert.alert
    assert [(a.id, a.action, a.ok, a.detail) for a in done.actions] == [
        (kill.id, "kill_process", True, "killed 1 process(es): 5000")]
    assert not learning.owns(kill.id)


def test_events_seen_again_take_the_short_way_with_the_same_outcome():
    clock = Clock()
    p = learned(clock)
    lr = p.learners["unit:web.service"]
    assert lr.seen  # what repeated while learning is remembered as held
    same = run(9)
    for _ in range(3):
        assert novelty(p.observe(same)) == []
    before = p.observed
    assert novelty(p.observe(same)) == [] and p.observed == before + len(same)
    # a key remembered for one workload says nothing of another's
    other = wire.Open(pid=1, path="/srv/web/app.py", flags=0, unit="other.service", cgroup=78)
    assert p.observe([other]) == [other] and p.learners["unit:other.service"].p.state == "learning"


def test_a_generated_name_is_held_by_its_kind_and_never_stands_for_another_name():
    from agent._profile import quick_path

    for path in ("/proc/4242/status", "/var/lib/nginx/body/00a1b2c3d4e5f607", "/q/50ba549f2a738cb31b3215cd01ec635f.json",
                 "/a/1.5.json", "/etc/deadbeef", "/lib/libssl.so.3", "/b/db-20231116.tgz", "/tmp/x1/y", "/run/user/0/k",
                 "/x/12ab34cd/ff00ee11/n.json.gz", "/srv/v2/app", "/.ssh/id_rsa"):
        assert generalise_path(quick_path(path)) == generalise_path(path), path
    assert quick_path("/etc/deadbeef") == "/etc/deadbeef"  # no digit: a name, not generated
    clock = Clock()
    p = learned(clock)  # its runs read /proc/PID/status of three pids
    for pid in range(7000, 7010):
        assert novelty(p.observe([wire.Open(pid=pid, path=f"/proc/{pid}/status", flags=0, **SVC)])) == []
    [alert] = novelty(p.observe([wire.Open(pid=1, path="/proc/1/environ", flags=0, **SVC)]))
    assert alert.novel == ["read\t/proc/*/environ"]


def _fake_proc(tmp_path, cgroups: dict[int, str]):
    """A procfs with /proc/PID/cgroup only, for the real ``Containers``."""
    proc = tmp_path / "proc"
    for pid, path in cgroups.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"0::{path}\n")
    proc.mkdir(exist_ok=True)
    return proc


CG = dict(cgroup=4711, agent="a1")  # neither a service nor a container: a cgroup:ID workload


def test_a_cgroup_workload_keeps_its_path_found_once_and_a_gone_one_none(tmp_path):
    from kmod import Containers

    proc = _fake_proc(tmp_path, {300: "/immune-self-1/model"})
    containers = Containers(root=tmp_path, proc=proc, cgroup2="")  # no mount: the pid's file says
    asked = []

    def resolve(pid: int, cgroup: int) -> str | None:
        asked.append((pid, cgroup))
        return containers.cgroup_path(pid, cgroup)

    p = Profiles("a1", ProfileSettings(learn=3600, stable=600, upload=0.0), clock=Clock(), resolve=resolve)
    p.observe([wire.Exec(pid=300, exe="/usr/bin/python3", **CG), wire.Open(pid=300, path="/srv/m.bin", **CG),
               wire.Exec(pid=301, exe="/bin/sh", unit="web.service", cgroup=5, agent="a1")])
    assert p.learners["cgroup:4711"].p.cgroup_path == "/immune-self-1/model"
    assert p.learners["unit:web.service"].p.cgroup_path == ""  # its name says where it is
    assert asked == [(300, 4711)]  # once, not per event, never for a unit
    [ev] = [e for e in p.tick() if e.workload == "cgroup:4711"]
    assert ev.cgroup_path == "/immune-self-1/model" == decode_profile(ev.body).cgroup_path
    # Its process gone before its first event was seen: no path, learning goes on.
    p.observe([wire.Exec(pid=999, exe="/bin/true", cgroup=4712, agent="a1")])
    assert p.learners["cgroup:4712"].p.cgroup_path == "" and p.learners["cgroup:4712"].size() == 1


def test_a_profile_kept_before_the_path_loads_and_finds_it_once(tmp_path):
    from kmod import Containers

    class OldProfile(msgspec.Struct, kw_only=True):  # the fields of version 1 before cgroup_path
        workload: str
        state: str = "learning"
        started: float = 0.0
        changed: float = 0.0
        revision: int = 0
        events: int = 0
        items: dict[str, list[str]] = {}
        pending: dict[str, float] = {}

    class OldFile(msgspec.Struct):
        version: int
        profile: OldProfile

    folder = tmp_path / "profiles"
    folder.mkdir()
    old = OldProfile(workload="cgroup:4711", started=Clock().now, changed=Clock().now, revision=3, events=5,
                     items={"exec": ["exec\t/usr/bin/python3\t\t"]})
    ProfileStore(folder).save([])  # the folder as the agent makes it
    path = ProfileStore(folder)._path("cgroup:4711")
    path.write_bytes(msgspec.msgpack.encode(OldFile(1, old)))
    proc = _fake_proc(tmp_path, {300: "/immune-self-1/model"})
    containers = Containers(root=tmp_path, proc=proc, cgroup2="")
    lines = []
    ln = Learning("a1", folder, ProfileSettings(learn=3600, stable=600), clock=Clock(), log=lines.append,
                  resolve=containers.cgroup_path)
    assert lines == []
    p = ln.profiles.learners["cgroup:4711"].p
    assert p.cgroup_path == "" and p.revision == 3 and p.items == old.items
    # Its next event finds the path (a change: saved and sent again).
    ln.profiles.observe([wire.Exec(pid=300, exe="/usr/bin/python3", **CG)])
    assert p.cgroup_path == "/immune-self-1/model" and p.revision == 4
    _, changed = ln.tick()
    ln.save(changed)
    [back], bad = ProfileStore(folder).load()
    assert bad == [] and back.cgroup_path == "/immune-self-1/model"


def test_a_bad_cgroup_path_in_a_profile_is_refused():
    body = msgspec.msgpack.encode({"workload": "cgroup:1", "cgroup_path": 17})
    with pytest.raises(ValueError, match=r"not a profile: Expected `str`, got `int` - at `\$.cgroup_path`"):
        decode_profile(body)
    body = msgspec.msgpack.encode({"workload": "cgroup:1", "cgroup_path": "/" + "x" * wire.MAX_PATH})
    with pytest.raises(ValueError, match=r"length <= 4096 - at `\$.cgroup_path`"):
        decode_profile(body)
    body = msgspec.msgpack.encode({"workload": "cgroup:1", "cgroup_path": "model"})
    with pytest.raises(ValueError, match="not an absolute cgroup v2 path"):
        decode_profile(body)
