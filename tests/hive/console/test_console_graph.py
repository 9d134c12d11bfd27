"""An incident's graph: one circle per host, one arrow per link with its
port, every name escaped (an agent name is data an attacker may choose)."""

import xml.etree.ElementTree as ET

from hive.console._graph import incident_svg
from hive.correlate import Incident

NS = "{http://www.w3.org/2000/svg}"


def test_hosts_and_links_are_drawn_and_names_escaped():
    evil = '<script>alert(1)</script>"&'
    inc = Incident(id="i1", title="Lateral <b>", opened=1, updated=2,
                   agents=["web1", "db1", evil], edges=[("web1", "db1", 22), ("db1", evil, 445), ("web1", "db1", 22)])
    svg = incident_svg(inc)
    assert "<script" not in svg and "<b>" not in svg
    root = ET.fromstring(svg)  # well-formed XML
    assert len(root.findall(f".//{NS}circle")) == 3
    assert len(root.findall(f".//{NS}line")) == 2  # the repeated link drawn once
    assert sorted(t.text for t in root.findall(f".//{NS}text[@class='port']")) == ["22", "445"]
    assert [t.text for t in root.findall(f".//{NS}title")] == ["web1", "db1", evil]


def test_one_host_and_a_host_known_only_from_a_link():
    assert ET.fromstring(incident_svg(Incident(id="i", title="t", opened=0, updated=0, agents=["a"])))
    svg = incident_svg(Incident(id="i", title="t", opened=0, updated=0, agents=["a"], edges=[("a", "b", 1)]))
    assert len(ET.fromstring(svg).findall(f".//{NS}circle")) == 2
