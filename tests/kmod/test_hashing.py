"""The guard's hasher as a plain object: no kernel needed."""

import hashlib
import os
import threading

import pytest

from kmod._fanotify import Hasher, _identity


@pytest.fixture
def running():
    """A started hasher and the semaphore it releases after each file."""
    done = threading.Semaphore(0)
    hasher = Hasher(done.release)
    hasher.start()
    yield hasher, done
    hasher.close()


def hashed_by(hasher: Hasher, done: threading.Semaphore, path) -> tuple[tuple, str | None]:
    fd = os.open(path, os.O_RDONLY)
    try:
        key = _identity(os.fstat(fd))
        assert hasher.submit(key, fd)
    finally:
        os.close(fd)  # the hasher reads through its own copy
    assert done.acquire(timeout=10)
    return key, hasher.digest(key)


def test_digests_are_computed_behind_and_kept_by_identity(running, tmp_path):
    hasher, done = running
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    key, digest = hashed_by(hasher, done, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hasher.counts["hashed"] == 1 and hasher.counts["hash_hits"] == 1
    path.write_bytes(b"y" * (3 << 20))  # rewritten: a new identity, hashed anew
    key2, digest2 = hashed_by(hasher, done, path)
    assert key2 != key and digest2 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_changed_since_it_was_looked_at_gets_no_digest(running, tmp_path):
    hasher, done = running
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    key = _identity(os.fstat(fd))
    with open(path, "ab") as f:
        f.write(b"appended")
    assert hasher.submit(key, fd)
    os.close(fd)
    assert done.acquire(timeout=10)
    assert hasher.digest(key) is None and hasher.counts["hash_failed"] == 1


def test_the_backlog_is_bounded(tmp_path):
    hasher = Hasher(lambda: None, backlog=2)  # not started: nothing is taken off the queue
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        keys = [(0, i, 1, 0, 0) for i in range(3)]
        assert hasher.submit(keys[0], fd) and hasher.submit(keys[1], fd)
        assert hasher.submit(keys[0], fd)  # already queued: not twice
        assert not hasher.submit(keys[2], fd)
        assert hasher.counts["hash_refused"] == 1
    finally:
        os.close(fd)
        hasher.close()  # closes the copies still queued
