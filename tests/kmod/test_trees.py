"""The folder trees under "**" open blocks (kmod/_trees.py): which ones
there are, and the new folders inotify reports (no BPF needed)."""

import os

import pytest

from kmod import Policy, PolicyError
from kmod._trees import Trees


def test_only_double_star_blocks_reach_below_a_folders_children():
    p = Policy.parse('[[rule]]\nname = "k"\nhook = "open"\naction = "block"\n'
                     'match.path = ["/srv/keys/**", "/srv/keys/x/**", "/etc/x/*.pem", "/etc/shadow"]\n')
    assert p.open_trees() == ["/srv/keys", "/srv/keys/x"]
    with pytest.raises(PolicyError, match="wildcard before its last component"):
        Policy.parse('[[rule]]\nname = "k"\nhook = "open"\naction = "block"\nmatch.path = "/home/*/.ssh/id_*"\n')


def test_a_tree_is_watched_and_its_new_folders_reported_with_what_is_below_them(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    os.symlink("/etc", tmp_path / "link")  # not followed
    trees = Trees()
    try:
        assert sorted(trees.add(str(tmp_path))) == sorted(map(str, [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]))
        assert trees.news() == []
        (tmp_path / "a" / "new").mkdir()
        (tmp_path / "moved").mkdir()
        (tmp_path / "moved" / "inner").mkdir()
        os.rename(tmp_path / "moved", tmp_path / "a" / "b" / "moved")  # a folder moved in, with its own
        (tmp_path / "new-file").write_text("x")  # a file: nothing to mark
        news = trees.news()
        assert str(tmp_path / "a" / "new") in news
        assert str(tmp_path / "a" / "b" / "moved" / "inner") in news
        assert not any(n.endswith("new-file") for n in news)
    finally:
        trees.close()


def test_the_walk_is_capped(tmp_path):
    for d in ("a/x", "b/y"):
        (tmp_path / d).mkdir(parents=True)
    small = Trees(most=2)
    try:
        assert len(small.add(str(tmp_path))) == 2 and small.capped
    finally:
        small.close()
