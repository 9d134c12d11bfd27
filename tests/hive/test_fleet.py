"""The router's fleet decisions, without sockets: which bundle goes to which
agent, once per connection, never again once refused."""

import wire
from hive import BundleRow
from hive._fleet import Fleet


def bundle(version, name, **labels):
    return BundleRow(version, name, labels, b"signed", 0.0, "")


def test_the_most_specific_then_newest_bundle_goes_once_per_connection():
    f = Fleet()
    f.latest = [bundle(1, "all"), bundle(2, "web", role="web"), bundle(3, "web-fra", role="web", dc="fra"),
                bundle(4, "all2")]
    f.labels = {"a": {"role": "web"}, "b": {"role": "web", "dc": "fra"}, "c": {"role": "db"}}
    for agent in "abcd":
        f.hello(agent, 0, b"conn-1")
    assert [(a, getattr(f.due(a, 3), "version", None)) for a in "abcd"] == [("a", 2), ("b", 3), ("c", 4), ("d", 4)]
    assert f.due("a", 3) is None  # sent on this connection already
    f.hello("a", 0, b"conn-1")  # a Hello again on the same connection (its policy changed): not again
    assert f.due("a", 3) is None
    f.hello("a", 0, b"conn-2")  # reconnected: the bundle may have been lost
    assert f.due("a", 3).version == 2
    f.status("a", wire.BundleStatus(version=2, ok=True, running=2))
    f.hello("a", 2, b"conn-3")
    assert f.due("a", 3) is None  # it runs it


def test_a_refused_bundle_is_not_sent_again_and_old_agents_get_none():
    f = Fleet()
    f.latest = [bundle(7, "all")]
    f.hello("a", 5, b"c1")
    assert f.due("a", 2) is None  # wire version 2 cannot decode a bundle
    assert f.due("a", 3).version == 7
    f.status("a", wire.BundleStatus(version=7, ok=False, detail="its policy does not load", running=5))
    f.hello("a", 5, b"c2")
    assert f.due("a", 3) is None
    f.latest = [bundle(8, "all")]
    assert f.due("a", 3).version == 8
