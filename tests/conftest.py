import pytest

from actors import Context, Runtime


@pytest.fixture
def runtime():
    return Runtime()


@pytest.fixture
def root_ctx(runtime):
    return Context(runtime, "t")
