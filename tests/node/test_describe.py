"""One line per event in `immune-node events`."""

import wire
from hive.present import container_label, describe
from node.cli import main


def test_a_folded_open_says_how_many_it_stands_for():
    assert describe(wire.Open(path="/etc/shadow")) == "/etc/shadow"
    assert describe(wire.Open(path="/etc/shadow", count=1000)) == "/etc/shadow (1000 times)"


def test_an_id_the_sensor_never_saw_is_a_question_mark():
    assert describe(wire.SetId(call="setuid", old=0, new=65534)) == "setuid 0->65534"
    assert describe(wire.SetId(call="setuid", old=-1, new=65534)) == "setuid ?->65534"


def test_the_other_kinds():
    assert describe(wire.Exec(filename="/bin/ls", argv=["ls", "-l"])) == "ls -l"
    assert describe(wire.Connect(family=10, address="::1", port=4444)) == "[::1]:4444"
    assert describe(wire.Notice(what="drops", count=3, detail="ring full")) == "drops 3 ring full"


def test_the_container_a_person_reads():
    assert container_label(wire.Open(path="/x")) == "-"
    assert container_label(None) == "-"
    cid = "4f" * 32
    assert container_label(wire.Open(container=cid)) == cid[:12]
    assert container_label(wire.Exec(container=cid, container_name="vllm",
                                     container_image="docker.io/vllm/vllm-openai:v0.6.0")) == "vllm (vllm/vllm-openai:v0.6.0)"
    assert container_label(wire.Exec(container="web1", container_name="web1",
                                     container_image="docker.io/library/nginx:1.27")) == "web1 (nginx:1.27)"
    long = "registry.example.com/team/model-server@sha256:" + "ab" * 32
    assert container_label(wire.Exec(container=cid, container_image=long)) == f"{cid[:12]} ({long[:39]}\u2026)"


def test_events_and_alerts_show_the_container(tmp_path, capsys):
    from hive import Store
    from hive._messages import Ingest

    store = Store(tmp_path / "hive.db")
    inside = wire.Exec(time=2_000_000_000_000_000_000, pid=42, filename="/tmp/x", argv=["/tmp/x"], verdict="block",
                       container="c" * 64, container_runtime="containerd", container_name="vllm",
                       container_image="docker.io/vllm/vllm-openai:v0.6.0")
    host = wire.Exec(time=2_000_000_000_000_000_001, pid=43, filename="/bin/ls", argv=["ls"])
    store.ingest([Ingest(agent="gpu-1", events=[inside, host])],
                 [wire.Alert(id="a1", rule_id="r", title="Exec from tmp", agent="gpu-1",
                             time=inside.time, events=[inside])])
    store.close()
    assert main(["events", "--data", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "CONTAINER" in lines[0]
    assert "vllm (vllm/vllm-openai:v0.6.0)" in lines[2] and "/tmp/x" in lines[2]
    assert lines[1].split()[6] == "-" and lines[1].endswith("ls")
    assert main(["alerts", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CONTAINER" in out and "vllm (vllm/vllm-openai:v0.6.0)" in out and "Exec from tmp" in out
