import os

import pytest

from actors import Context, Runtime


@pytest.fixture
def runtime():
    return Runtime()


@pytest.fixture
def root_ctx(runtime):
    return Context(runtime, "t")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a kernel test may not skip: CI runs as root on a BTF kernel, so a
    skip there means the test silently stopped testing anything."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("kernel"):
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped in CI: {report.longrepr}"


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server for the session (tests/pgserver.py).  In
    CI a missing PostgreSQL fails: a skip there would test nothing."""
    from tests import pgserver

    why = pgserver.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed in CI: {why}")
        pytest.skip(f"no PostgreSQL: {why}")
    server = pgserver.start()
    yield server
    pgserver.stop(server)


@pytest.fixture
def pg_url(pg_server):
    """A PostgreSQL store of its own for this test (a fresh schema)."""
    return pg_server.fresh_schema()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """Where a test's store is: run once on each backend."""
    if request.param == "sqlite":
        return tmp_path / "hive.db"
    return request.getfixturevalue("pg_url")
@pytest.fixture
def nats_cluster(tmp_path_factory):
    """Three nats-server processes as a JetStream cluster on loopback, with
    a meta leader; stopped after the test.  Without nats-server the test is
    skipped, except under CI, where that fails."""
    from tests.natsd import NATS_SERVER, NatsCluster

    if not os.path.exists(NATS_SERVER):
        if os.environ.get("CI"):
            pytest.fail(f"nats-server missing at {NATS_SERVER} under CI (setup.sh test installs it)")
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
