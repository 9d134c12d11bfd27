from hive.cluster._status import ClusterView, _ranges, cluster_lines


def test_ranges_are_compact():
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([3]) == "3" and _ranges([]) == ""


def test_the_cluster_as_status_shows_it():
    view = ClusterView(
        nodes={"node1": {"ingest:all", "correlate:all"}, "node2": {"ingest:router"}},
        owners={"ingest": {0: "node1", 1: "node1", 2: "node2"}, "correlate": {0: "node1", 1: "node1", 3: "node1"}},
        partitions={"ingest": 4, "correlate": 4},
        lag={"ingest p0": (12, 3), "detect": (0, 0)})
    assert cluster_lines(view) == [
        "cluster: 2 live node(s)",
        "  node1                all          ingest 0-1  correlate 0-1,3",
        "  node2                router       ingest 2",
        "  ingest partitions: 4 (node1 0-1, node2 2)",
        "  ingest partitions without an owner: 3",
        "  correlate partitions: 4 (node1 0-1,3)",
        "  correlate partitions without an owner: 2",
        "queues (waiting / taken, not yet acknowledged):",
        "  ingest p0              12 / 3",
        "  detect                  0 / 0",
    ]
