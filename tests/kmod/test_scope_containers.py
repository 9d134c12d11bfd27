"""A sensor scoped to one container: found by id, name or image among the
running ones, then watched as its cgroup."""

from __future__ import annotations

import os

import pytest

from kmod import Scope, ScopeError
from kmod._scope import S_CGROUP
from tests import containers
from tests.kmod.test_containers import CID, OTHER, Machine


@pytest.fixture
def machine(tmp_path):
    m = Machine(tmp_path)
    m.file(f"var/lib/docker/containers/{CID}/config.v2.json", {"Name": "/llm-1", "Config": {"Image": "vllm/x:1"}})
    m.file(f"var/lib/docker/containers/{OTHER}/config.v2.json", {"Name": "/llm-2", "Config": {"Image": "vllm/x:2"}})
    m.file("run/runc/job/state.json", {"config": {"labels": []}})
    m.process(f"/system.slice/docker-{CID}.scope")
    m.process(f"/system.slice/docker-{CID}.scope")  # two processes, one container
    m.process(f"/system.slice/docker-{OTHER}.scope")
    m.process("/job")
    m.process("/system.slice/cron.service")
    return m


@pytest.mark.parametrize("selector, found", [
    ("llm-1", CID), (CID, CID), (CID[:12], CID), ("job", "job"),
    ("name=llm-2", OTHER), ("image=vllm/x:1", CID), ("image=docker.io/vllm/x:2", OTHER),
    ("image=vllm/*,name=*-1", CID), ("runtime=runc", "job"),
])
def test_one_running_container_is_found(machine, selector, found):
    assert Scope.container(selector).find_container(machine.resolver()).id == found


@pytest.mark.parametrize("selector, says", [
    ("image=vllm/*", "2 running containers match (llm-1, llm-2); a scope is one cgroup: name one, or select "
                     "them all in the policy's rules"),
    ("name=web", "no running container matches (running: job, llm-1, llm-2)"),
    (CID[:6], "no running container matches"),  # a short id prefix is no id
])
def test_none_or_several_is_refused_saying_so(machine, selector, says):
    with pytest.raises(ScopeError) as e:
        Scope.container(selector).find_container(machine.resolver())
    assert says in str(e.value) and str(e.value).startswith(f"scope container:{selector}: ")


def test_parse():
    assert Scope.parse("container:web") == Scope.container("web") == Scope("container", "web")
    assert str(Scope.parse("container:image=vllm/*")) == "container:image=vllm/*"
    with pytest.raises(ScopeError, match="expected machine, cgroup:PATH, netns:PATH or container:SELECTOR"):
        Scope.parse("container:")
    with pytest.raises(ScopeError, match="'tag=1': expected KEY=GLOB"):
        Scope.parse("container:image=x,tag=1")


def test_a_real_container_scope_is_its_cgroup(tmp_path):
    with containers.Container(tmp_path, ["sleep", "60"],
                              annotations={"org.opencontainers.image.ref.name": "scoped/img:1"}) as c:
        resolved = Scope.parse("container:image=scoped/*").resolve()
        assert resolved.code == S_CGROUP and resolved.cgroup_rel == f"/{c.id}"
        assert resolved.scope == Scope.container("image=scoped/*")
        assert resolved.contains(c.pid) and not resolved.contains(os.getpid())
