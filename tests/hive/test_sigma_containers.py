"""Sigma fields of a container's events: ContainerId (and the older
Container), ContainerRuntime, ContainerName, ContainerImage, and the
namespaces the kernel reports."""

import textwrap

from hive.sigma import RuleEngine, sigma_events
from wire import Exec


def write(directory, name, text):
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_container_fields():
    event = Exec(filename="/tmp/x", container="c" * 64, container_runtime="containerd", container_name="vllm",
                 container_image="docker.io/vllm/vllm-openai:v0.6.0", mntns=4026532801, pidns=4026532802, vpid=7)
    (_, f), *_auditd = sigma_events(event)
    assert (f["ContainerId"], f["Container"], f["ContainerRuntime"], f["ContainerName"], f["ContainerImage"]) == \
        ("c" * 64, "c" * 64, "containerd", "vllm", "docker.io/vllm/vllm-openai:v0.6.0")
    assert (f["MountNamespace"], f["PidNamespace"], f["VirtualProcessId"]) == (4026532801, 4026532802, 7)
    (_, host), *_auditd = sigma_events(Exec(filename="/tmp/x"))
    assert not {"Container", "ContainerId", "ContainerImage", "MountNamespace", "VirtualProcessId"} & set(host)


def test_a_rule_matches_the_container_image(tmp_path):
    write(tmp_path, "vllm.yml", """\
        title: Shell in an inference container
        id: 22222222-2222-4222-8222-222222222222
        level: high
        logsource: {product: linux, category: process_creation}
        detection:
            shell:
                Image|endswith: /sh
            vllm:
                ContainerImage|contains: vllm/vllm-openai
            condition: shell and vllm
        fields: [ContainerName, ContainerImage]
        """)
    engine = RuleEngine()
    assert engine.load(tmp_path).loaded == 1
    inside = Exec(agent="gpu-1", filename="/bin/sh", container="c1", container_name="vllm",
                  container_image="docker.io/vllm/vllm-openai:v0.6.0")
    (alert,) = engine.process(inside)
    assert alert.title == "Shell in an inference container" and alert.events == [inside]
    assert engine.process(Exec(agent="gpu-1", filename="/bin/sh")) == []  # the host's shell
    assert engine.process(Exec(agent="gpu-1", filename="/bin/sh", container="c2", container_image="nginx:1")) == []
