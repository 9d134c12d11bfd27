"""``immune-node profile``: profiles as the hive stores them (``wire.Profile``
events), a novelty alert accepted with one command, a policy proposed."""

import time

import pytest

import wire
from agent._profile import items_of
from hive import Ingest, Store
from hive.playbook import Records
from hive.sigma import RuleEngine
from kmod import DEFAULT_POLICY, Containers, Policy
from node._profile import _complement, _port_ranges, merged, propose
from node.cli import main
from tests.agent.test_profile import SVC, Clock, learned


@pytest.fixture
def hive(tmp_path):
    """A hive's store with web1's profile of web.service and one novelty alert."""
    clock = Clock()
    p = learned(clock)
    store = Store(tmp_path / "hive.db")
    store.agent_seen("web1", time.time(), hello=wire.Hello(agent="web1", hostname="web1", pid=999))
    src = wire.Connect(pid=5000, time=time.time_ns(), family=2, address="203.0.113.9", port=4444, **SVC)
    events = [p.upload("unit:web.service"), *p.observe([src])]
    for ev in events:
        ev.agent = "web1"
    alerts = RuleEngine().process_batch(events)
    store.ingest([Ingest(agent="web1", stream="s1", seq=1, events=events)], alerts)
    store.close()
    return tmp_path, alerts


def test_list_show_and_accept(hive, capsys):
    data, [alert] = hive
    assert alert.level == "novel" and alert.edge and "the profile held" in alert.detail
    assert main(["profile", "list", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "web1" in out and "unit:web.service" in out and "stable" in out
    assert main(["profile", "show", "unit:web.service", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "exec /usr/bin/python3.12 (parent /usr/lib/systemd/systemd" in out and "bind tcp 0.0.0.0:8080" in out
    assert main(["profile", "accept", alert.id[:10], "--data", str(data)]) == 0
    assert "connect tcp 203.0.113.9:4444" in capsys.readouterr().out
    store = Store(data / "hive.db")
    try:
        [row] = Records(store.db).actions()
    finally:
        store.close()
    assert (row.action, row.agent, row.state, row.alert) == ("update_profile", "web1", "requested", alert.id)
    assert row.params == {"workload": "unit:web.service", "accept": ["connect\ttcp\t203.0.113.9\t4444"]}


def test_unknown_names_are_one_line(hive, capsys):
    data, _ = hive
    for argv, says in ((["show", "unit:nope.service"], "no profile of 'unit:nope.service'"),
                       (["accept", "zzzz"], "no novelty alert 'zzzz'"),
                       (["propose", "unit:nope.service"], "no profile")):
        assert main(["profile", *argv, "--data", str(data)]) != 0
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_propose_writes_a_policy_that_loads_and_a_diff(hive, capsys, tmp_path):
    data, _ = hive
    out = tmp_path / "p.toml"
    assert main(["profile", "propose", "unit:web.service", "--mode", "block", "--out", str(out),
                 "--data", str(data)]) == 0
    diff = capsys.readouterr().out
    assert "+name = \"profile-unit-web.service-exec\"" in diff and "a/the built-in default policy" in diff
    # Every rule selects the unit's cgroup: a process of the unit (pid 4242)
    # meets them, another one (pid 4343, another unit) only the base policy's.
    proc = tmp_path / "proc"
    for pid, cgroup in ((4242, "/system.slice/web.service"), (4343, "/system.slice/db.service")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
    policy = Policy.parse(out.read_text(), containers=Containers(root=tmp_path, proc=proc, cgroup2=""))
    assert policy.match_exec("/usr/bin/python3.12", pid=4242).action == "allow"
    assert policy.match_exec("/usr/bin/gzip", pid=4242).action == "allow"
    assert policy.match_exec("/usr/bin/dash", pid=4242).action == "block"
    assert policy.match_open("/etc/shadow", pid=4242).action == "block"
    assert policy.match_exec("/usr/bin/dash", pid=4343) is None
    assert policy.match_open("/etc/shadow", pid=4343).name != "profile-unit-web.service-secrets-other"
    assert all(r.cgroups == ("/system.slice/web.service", "/system.slice/*.slice/web.service")
               for r in policy.rules if r.name.startswith("profile-"))
    assert "its rules select unit:web.service" in diff
    assert len(policy.rules) > len(Policy.parse(DEFAULT_POLICY.read_text()).rules)


def test_a_cgroup_workload_is_selected_by_the_path_given(hive, capsys, tmp_path):
    data, _ = hive
    out = tmp_path / "p.toml"
    assert main(["profile", "propose", "unit:web.service", "--cgroup", "/web.slice/web-*.service",
                 "--out", str(out), "--data", str(data)]) == 0
    policy = Policy.parse(out.read_text())
    assert {r.cgroups for r in policy.rules if r.name.startswith("profile-")} == {("/web.slice/web-*.service",)}
    assert main(["profile", "propose", "unit:web.service", "--cgroup", "web.slice",
                 "--out", str(out), "--data", str(data)]) != 0
    assert "must be absolute from the cgroup2 root" in capsys.readouterr().err


def test_proposed_rules_from_a_profile():
    clock = Clock()
    p = learned(clock).learners["unit:web.service"].export()
    text = propose(p, "audit")
    policy = Policy.parse("version = 1\n" + text)
    by = {r.name: r for r in policy.rules}
    assert by["profile-unit-web.service-exec-other"].action == "audit"
    connect = by["profile-unit-web.service-connect-other"]
    import ipaddress

    held = ipaddress.ip_address("10.0.0.5")
    assert not any(held in n for n in connect.networks)
    assert any(ipaddress.ip_address("203.0.113.9") in n for n in connect.networks)
    bind = by["profile-unit-web.service-bind-other"]
    assert 8080 not in bind.ports and 22 in bind.ports and 1024 in bind.ports
    with pytest.raises(ValueError):
        propose(p, "kill")


def test_complement_and_ranges():
    assert _complement(["0.0.0.0/1", "128.0.0.0/1"]) == ["::/0"]
    assert "10.0.0.4/32" in _complement(["10.0.0.5"]) and "10.0.0.5/32" not in _complement(["10.0.0.5"])
    assert _port_ranges({22, 80}, 1, 100) == ["1-21", "23-79", "81-100"]
    assert _port_ranges(set(range(1, 1025))) == []
    assert merged("version = 1\n[[rule]]\nname='a'\n", "X\n") == "version = 1\nX\n\n[[rule]]\nname='a'\n"


def test_the_same_workload_across_the_fleet_is_merged(hive, capsys):
    data, _ = hive
    clock = Clock()
    other = learned(clock)
    extra = wire.Exec(pid=9, exe="/usr/bin/curl", parent_image="/usr/bin/python3.12", argv=["curl", "-s"], **SVC)
    lr = other.learners["unit:web.service"]
    lr.add(items_of(extra)[0])
    ev = other.upload("unit:web.service")
    ev.agent = "web2"
    store = Store(data / "hive.db")
    store.ingest([Ingest(agent="web2", stream="s2", seq=1, events=[ev])])
    store.close()
    assert main(["profile", "show", "unit:web.service", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unit:web.service on web1, web2 (merged)") and "exec /usr/bin/curl" in out
    assert main(["profile", "show", "unit:web.service", "--agent", "web1", "--data", str(data)]) == 0
    assert "curl" not in capsys.readouterr().out


def _cgroup_profile(data, agent: str, path: str, cgroup: int = 4711) -> None:
    """``agent``'s profile of a cgroup:ID workload, carrying ``path``, in the hive's store."""
    from agent._profile import Profiles, ProfileSettings

    clock = Clock()
    p = Profiles(agent, ProfileSettings(learn=3600, stable=600), clock=clock,
                 resolve=lambda pid, cg: path or None)
    p.observe([wire.Exec(pid=300, exe="/usr/bin/python3", parent_image="/bin/bash", cgroup=cgroup, agent=agent),
               wire.Connect(pid=300, family=2, protocol="tcp", address="10.0.0.5", port=5432,
                            cgroup=cgroup, agent=agent)])
    ev = p.upload(f"cgroup:{cgroup}")
    ev.agent = agent
    store = Store(data / "hive.db")
    store.ingest([Ingest(agent=agent, stream=f"s-{agent}", seq=1, events=[ev])])
    store.close()


def test_a_cgroup_workload_is_selected_by_the_path_its_profile_carries(hive, capsys, tmp_path):
    data, _ = hive
    _cgroup_profile(data, "web1", "/immune-self-1/model [a*]")
    out = tmp_path / "p.toml"
    assert main(["profile", "propose", "cgroup:4711", "--out", str(out), "--data", str(data)]) == 0
    said = capsys.readouterr().out
    assert "its rules select cgroup:4711 by cgroup /immune-self-1/model [[]a[*]]" in said
    policy = Policy.parse(out.read_text())
    mine = [r for r in policy.rules if r.name.startswith("profile-")]
    assert len(mine) >= 4 and {r.cgroups for r in mine} == {("/immune-self-1/model [[]a[*]]",)}
    # The literal path matches itself only: the glob characters in its name are not wildcards.
    assert all(r.match_cgroup("/immune-self-1/model [a*]") and not r.match_cgroup("/immune-self-1/model b")
               for r in mine)
    # --cgroup overrides it.
    assert main(["profile", "propose", "cgroup:4711", "--cgroup", "/other/*", "--out", str(out),
                 "--data", str(data)]) == 0
    assert {r.cgroups for r in Policy.parse(out.read_text()).rules if r.name.startswith("profile-")} \
        == {("/other/*",)}
    assert main(["profile", "show", "cgroup:4711", "--data", str(data)]) == 0
    assert "\n  cgroup /immune-self-1/model [a*]\n" in capsys.readouterr().out


def test_a_cgroup_workload_without_a_path_needs_cgroup(hive, capsys, tmp_path):
    data, _ = hive
    _cgroup_profile(data, "web1", "")  # its cgroup was gone when learning began
    out = tmp_path / "p.toml"
    assert main(["profile", "propose", "cgroup:4711", "--out", str(out), "--data", str(data)]) == 0
    said = capsys.readouterr().out
    assert "its rules select nothing" in said and "--cgroup PATH is needed" in said
    assert not any(r.cgroups for r in Policy.parse(out.read_text()).rules if r.name.startswith("profile-"))
    assert main(["profile", "show", "cgroup:4711", "--data", str(data)]) == 0
    assert "cgroup path not known" in capsys.readouterr().out


def test_a_cgroup_workload_on_two_agents_selects_each_ones_path(hive, capsys, tmp_path):
    data, _ = hive
    _cgroup_profile(data, "web1", "/a/model")
    _cgroup_profile(data, "web2", "/b/model")
    out = tmp_path / "p.toml"
    assert main(["profile", "propose", "cgroup:4711", "--out", str(out), "--data", str(data)]) == 0
    assert {r.cgroups for r in Policy.parse(out.read_text()).rules if r.name.startswith("profile-")} \
        == {("/a/model", "/b/model")}
