"""One line per event in `immune-node events`."""

import wire
from node.cli import describe


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
