import pytest

from .nodes import RunningNode


@pytest.fixture
def start_node():
    started: list[RunningNode] = []

    def start(command, data, *args, **kw):
        n = RunningNode(command, data, *args, **kw)
        started.append(n)
        return n

    yield start
    for n in started:
        n.kill()
