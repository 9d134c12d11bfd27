"""The rule folders a hive runs by default, and `rules update` installing a SigmaHQ set:
from a folder or a release archive, validated completely, swapped in by one rename,
and refused in one line, with the set in use untouched, whatever SOURCE holds."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from hive.sigma import (
    BUILTIN_RULES, SIGMAHQ_RULES, SUBJECT_FIELDS, UpdateError, listing, load_rules, rule_folders, sigmahq_folder,
    signature, suppression_key, update_sigmahq,
)
from hive.sigma import _update

LINUX = """title: {title}
id: {id}
status: test
author: someone
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        Image|endswith: '/{image}'
    condition: selection
level: high
"""
SSHD = LINUX.replace("category: process_creation", "service: sshd")
WINDOWS = LINUX.replace("product: linux", "product: windows")


def rule(n: int, template: str = LINUX, image: str = "tool") -> bytes:
    return template.format(title=f"Rule {n}", id=f"00000000-0000-4000-8000-{n:012d}", image=image).encode()


def release(top: str = "sigma-r2026-08-01") -> dict[str, bytes]:
    """A small SigmaHQ release: Linux rules, a Windows one, retired ones, a licence."""
    return {
        f"{top}/LICENSE": b"Detection Rule License (DRL) 1.1\n",
        f"{top}/rules/linux/process_creation/a.yml": rule(1),
        f"{top}/rules/linux/builtin/sshd/b.yml": rule(2, SSHD),
        f"{top}/rules/windows/process_creation/c.yml": rule(3, WINDOWS),
        f"{top}/deprecated/linux/d.yml": rule(4),
        f"{top}/rules-placeholder/linux/e.yml": rule(5),
        f"{top}/rules-threat-hunting/linux/f.yaml": rule(6, image="other"),
        f"{top}/README.md": b"# Sigma\n",
    }


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, str] = {}) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return path


def make_folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def installed_ids(data: Path) -> set[str]:
    report = load_rules([sigmahq_folder(data)]).report
    return {r.id for r in report.rules} | {f.rule_id for f in report.failures}


@pytest.fixture
def data(tmp_path):
    """A data folder with a set installed."""
    d = tmp_path / "data"
    update_sigmahq(d, make_folder(tmp_path / "first", {"first.yml": rule(99)}))
    return d


def state(data: Path) -> tuple:
    """What must not change when an update is refused: the link and every file under rules/."""
    rules = data / "rules"
    return (os.readlink(rules / "sigmahq"),
            sorted(str(p.relative_to(rules)) for p in rules.rglob("*") if p.name != ".update.lock"))


# -- where the rules come from ----------------------------------------------------


def test_the_hive_loads_the_pack_and_sigmahq_by_default(tmp_path):
    assert rule_folders(tmp_path) == [BUILTIN_RULES, SIGMAHQ_RULES]
    folders = rule_folders(tmp_path, ["/etc/immune/rules"], create=True)
    link = tmp_path / "rules" / "sigmahq"
    assert folders == [BUILTIN_RULES, link, Path("/etc/immune/rules")]
    assert Path(os.readlink(link)) == SIGMAHQ_RULES
    report = load_rules(folders[:2]).report
    sources = {r.source.split("/")[0] for r in listing(report, folders[:2])}
    assert sources == {"builtin", "sigmahq"}
    assert len(report.rules) > 150
    # what does not load is a logsource our sensor does not produce, or an auditd rule that
    # needs what only auditd's own configuration gives (a rule's key, a unit), each with its reason
    assert report.failures and {f.kind for f in report.failures} == {"logsource", "field"}
    assert all(" key " in f.reason or " unit " in f.reason for f in report.failures if f.kind == "field")


def test_a_link_to_where_the_package_was_is_turned_to_where_it_is(tmp_path):
    link = tmp_path / "rules" / "sigmahq"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "old-venv" / "sigmahq")
    assert sigmahq_folder(tmp_path) == SIGMAHQ_RULES  # without create: nothing written
    assert sigmahq_folder(tmp_path, create=True) == link
    assert Path(os.readlink(link)) == SIGMAHQ_RULES


def test_a_folder_of_the_operators_own_is_used_and_never_replaced(tmp_path):
    own = make_folder(tmp_path / "rules" / "sigmahq", {"a.yml": rule(1)})
    assert sigmahq_folder(tmp_path, create=True) == own and not own.is_symlink()
    source = make_folder(tmp_path / "src", {"b.yml": rule(2)})
    with pytest.raises(UpdateError, match="folder of your own"):
        update_sigmahq(tmp_path, source)
    assert (own / "a.yml").exists()


def test_a_linked_folder_is_read_through_its_target_so_a_swap_is_a_change(tmp_path):
    a = make_folder(tmp_path / "a", {"x.yml": rule(1)})
    b = make_folder(tmp_path / "b", {"x.yml": rule(1)})
    os.utime(b / "x.yml", ns=(os.stat(a / "x.yml").st_mtime_ns,) * 2)  # same size, same time
    link = tmp_path / "link"
    link.symlink_to(a)
    before = signature([link])
    link.unlink()
    link.symlink_to(b)
    assert signature([link]) != before


def test_the_readme_gives_each_builtin_rules_suppression_key():
    text = (BUILTIN_RULES.parent / "README.md").read_text()
    rows = {tuple(cell.strip(" `") for cell in line.strip("|").split("|"))
            for line in text.splitlines() if line.startswith("| ")}
    for category, subject in SUBJECT_FIELDS.items():
        assert (category, " + ".join(("Agent", *subject))) in rows
    report = load_rules([BUILTIN_RULES]).report
    for rule in (*report.rules, *report.correlations):
        path = str(rule.path.relative_to(BUILTIN_RULES.parent))
        assert (rule.title, path, " + ".join(suppression_key(rule))) in rows, rule.title


# -- installing ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_a_release_installs_its_linux_rules_only(tmp_path, kind):
    files = release()
    source = {"folder": lambda: make_folder(tmp_path / "src", files),
              "zip": lambda: make_zip(tmp_path / "sigma.zip", files),
              "tar": lambda: make_tar(tmp_path / "sigma.tar.gz", files)}[kind]()
    data = tmp_path / "data"
    done = update_sigmahq(data, source)
    assert (done.files, done.loaded, done.not_loaded) == (3, 2, 1)  # b.yml: sshd
    folder = sigmahq_folder(data)
    assert folder == data / "rules" / "sigmahq" and os.readlink(folder) == done.folder.name
    assert sorted(str(p.relative_to(done.folder)) for p in done.folder.rglob("*.y*ml")) == [
        "sigma-r2026-08-01/rules-threat-hunting/linux/f.yaml",
        "sigma-r2026-08-01/rules/linux/builtin/sshd/b.yml",
        "sigma-r2026-08-01/rules/linux/process_creation/a.yml"]
    assert (done.folder / "LICENSE").read_bytes().startswith(b"Detection Rule License")
    assert "DRL) 1.1" in (done.folder / "NOTICE.md").read_text()
    assert installed_ids(data) == {f"00000000-0000-4000-8000-{n:012d}" for n in (1, 2, 6)}


def test_the_shipped_set_installs_as_it_loads_in_place(tmp_path):
    done = update_sigmahq(tmp_path, SIGMAHQ_RULES)
    report = load_rules([SIGMAHQ_RULES]).report
    assert (done.loaded, done.not_loaded) == (report.loaded, report.failed)


def test_updates_keep_the_set_in_use_and_the_one_before(data, tmp_path):
    first = os.readlink(data / "rules" / "sigmahq")
    second = update_sigmahq(data, make_folder(tmp_path / "s2", {"a.yml": rule(1)})).folder.name
    third = update_sigmahq(data, make_folder(tmp_path / "s3", {"a.yml": rule(2)})).folder.name
    assert sorted(p.name for p in (data / "rules").iterdir()) == sorted(
        [".update.lock", "sigmahq", second, third])
    assert first not in os.listdir(data / "rules")
    assert installed_ids(data) == {"00000000-0000-4000-8000-000000000002"}


# -- refusing ------------------------------------------------------------------------------

BAD_YAML = b"title: t\nlogsource: {product: linux\n"


@pytest.mark.parametrize("make, says", [
    (lambda p: make_zip(p / "x.zip", {"../../evil.yml": rule(1)}), "leads outside"),
    (lambda p: make_zip(p / "x.zip", {"/etc/evil.yml": rule(1)}), "leads outside"),
    (lambda p: make_tar(p / "x.tgz", {"rules/../../evil.yml": rule(1)}), "leads outside"),
    (lambda p: make_tar(p / "x.tgz", {"a.yml": rule(1)}, links={"b.yml": "/etc/shadow"}),
     "b.yml is a link or a device"),
    (lambda p: make_zip(p / "x.zip", {"big.yml": b"#" * (1 << 20) + rule(1)}), "larger than 1 MiB"),
    (lambda p: make_zip(p / "x.zip", {"a.yml": rule(1), "rules/x.yml": BAD_YAML}), "rules/x.yml: yaml: line"),
    (lambda p: make_zip(p / "x.zip", {"a.yml": rule(1), "b.yml": rule(1)}), "b.yml: duplicate"),
    (lambda p: make_zip(p / "x.zip", {"c.yml": rule(3, WINDOWS)}), "no SigmaHQ Linux rule in it"),
    (lambda p: make_zip(p / "x.zip", {"b.yml": rule(2, SSHD)}), "none of its Linux rules can run here"),
    (lambda p: make_tar(p / "x.tgz", {"a.yml": rule(1), "./a.yml": rule(2)}), "appears twice"),
    (lambda p: make_zip(p / "x.zip", {"a.yml": rule(1).replace(b"status", b"\0status")}),
     "a.yml: yaml: unacceptable character #x0000"),  # YAML's reason spans two lines: said in one
    (lambda p: (p / "x.tgz").write_bytes(gzip.compress(b"x" * 100_000)[:20]) and p / "x.tgz",
     "not a readable archive: Compressed file ended"),
    (lambda p: p / "missing", "no such folder or archive"),
    (lambda p: (p / "x.tar.gz").write_bytes(os.urandom(4096)) and p / "x.tar.gz", "neither a folder nor"),
    (lambda p: (p / "x.zip").write_bytes(make_zip(p / "y.zip", release()).read_bytes()[:900]) and p / "x.zip",
     "neither a folder nor"),
    (lambda p: (p / "x.tgz").write_bytes(make_tar(p / "y.tgz", release()).read_bytes()[:300]) and p / "x.tgz",
     "not a readable tar archive"),
    (lambda p: make_folder(p / "src", {"a.yml": rule(1), "b.yml": rule(2)}) and
     ((p / "src" / "b.yml").unlink(), (p / "src" / "b.yml").symlink_to("/etc/passwd")) and p / "src",
     "b.yml is a link or a device"),
])
def test_a_broken_or_hostile_source_is_refused_in_one_line_and_changes_nothing(data, tmp_path, make, says):
    before = state(data)
    with pytest.raises(UpdateError) as e:
        update_sigmahq(data, make(tmp_path))
    assert says in str(e.value) and "\n" not in str(e.value)
    assert state(data) == before
    assert not (tmp_path / "evil.yml").exists() and not Path("/etc/evil.yml").exists()


def test_the_bounds_on_entries_and_bytes(data, tmp_path, monkeypatch):
    before = state(data)
    files = {f"r{n}.yml": rule(n) for n in range(20)}
    monkeypatch.setattr(_update, "MAX_ENTRIES", 10)
    with pytest.raises(UpdateError, match="more than 10 entries"):
        update_sigmahq(data, make_tar(tmp_path / "many.tgz", files))
    monkeypatch.setattr(_update, "MAX_ENTRIES", 100)
    monkeypatch.setattr(_update, "MAX_BYTES", 4096)
    with pytest.raises(UpdateError, match="more than 0 MiB in all"):
        update_sigmahq(data, make_zip(tmp_path / "many.zip", files))
    assert state(data) == before


class Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_a_tar_bomb_is_refused_by_its_headers_before_it_is_inflated(data, tmp_path, monkeypatch):
    before = state(data)
    with tarfile.open(tmp_path / "bomb.tgz", "w:gz") as t:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20  # 64 MiB of zeros: 64 KiB compressed
        t.addfile(info, Zeros())
        t.addfile(tarfile.TarInfo("after.bin"), io.BytesIO())
    monkeypatch.setattr(_update, "MAX_BYTES", 32 << 20)
    with pytest.raises(UpdateError, match="more than 32 MiB in all"):
        update_sigmahq(data, tmp_path / "bomb.tgz")
    assert state(data) == before


def test_one_update_at_a_time(data, tmp_path):
    with _update._locked(data / "rules" / ".update.lock"):
        with pytest.raises(UpdateError, match="another rules update is running"):
            update_sigmahq(data, make_folder(tmp_path / "s", {"a.yml": rule(1)}))
