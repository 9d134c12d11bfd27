"""The folder trees under "**" open blocks (kmod/_trees.py): which folders
need a mark, and the new ones inotify reports (no BPF needed)."""

import os

from kmod._trees import Trees, could_hold


def test_could_hold_follows_the_glob_down_to_the_files_folder():
    assert could_hold("/srv/keys/**", "/srv/keys") and could_hold("/srv/keys/**", "/srv/keys/a/b/c")
    assert could_hold("/home/*/.ssh/id_*", "/home/bob/.ssh")
    assert not could_hold("/home/*/.ssh/id_*", "/home/bob/other")
    assert not could_hold("/home/*/.ssh/id_*", "/home/bob/.ssh/deeper")  # the files are in .ssh itself
    assert not could_hold("/srv/keys/**", "/srv/other")


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


def test_the_walk_is_pruned_and_capped(tmp_path):
    for d in ("keep/x", "skip/y"):
        (tmp_path / d).mkdir(parents=True)
    trees = Trees()
    try:
        found = trees.add(str(tmp_path), lambda f: "skip" not in f)
        assert str(tmp_path / "keep" / "x") in found and not any("skip" in f for f in found)
        (tmp_path / "skip" / "later").mkdir()
        assert trees.news() == []  # made under a folder the walk left out
    finally:
        trees.close()
    small = Trees(most=2)
    try:
        assert len(small.add(str(tmp_path))) == 2 and small.capped
    finally:
        small.close()
