"""The context enrichment gives rules: the package that installed a program
(dpkg's lists), the package management session a process runs in, and
whether a set*uid call returns to an id the process held."""

import os
import time

import pytest

import wire
from agent import ProcessTable
from agent._packages import PackageIndex, is_manager, merged_usr
from hive.sigma import sigma_events

GONE = 4_000_000_000  # beyond any pid_max: never in /proc


def dpkg_info(tmp_path, lists: dict[str, list[str]]):
    info = tmp_path / "info"
    info.mkdir(exist_ok=True)
    for name, paths in lists.items():
        (info / f"{name}.list").write_text("".join(p + "\n" for p in paths))
    return info


def merged_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "sbin").mkdir()  # not merged here
    return root


@pytest.fixture
def packages(tmp_path):
    info = dpkg_info(tmp_path, {
        "coreutils": ["/.", "/bin", "/bin/chmod", "/usr/share/doc/coreutils"],
        "apt": ["/usr/bin/apt-get", "/usr/lib/apt/methods/http"],
        "dpkg": ["/usr/bin/dpkg"],
        "debconf": ["/usr/share/debconf/frontend"],
        "libc-bin:amd64": ["/sbin/ldconfig"],
    })
    return PackageIndex(str(info), root=str(merged_root(tmp_path)), background=False)


def test_owner_of_a_program_by_either_spelling_of_merged_usr(packages):
    assert packages.owner("/usr/bin/chmod") == packages.owner("/bin/chmod") == "coreutils"
    assert packages.owner("/usr/share/debconf/frontend") == "debconf"
    assert packages.owner("/sbin/ldconfig") == "libc-bin"  # the architecture is not the name
    assert packages.owner("/usr/sbin/ldconfig") == ""  # /sbin is not merged in this root
    for stranger in ("/usr/bin/chmod2", "/root/build/hello", "chmod", ""):
        assert packages.owner(stranger) == ""
    st = packages.statistics()
    assert (st.packages, st.paths, st.builds, st.skipped) == (5, 9, 1, 0)


def test_a_package_installed_later_is_known_once_dpkg_changed_its_lists(tmp_path):
    now = [0.0]
    info = dpkg_info(tmp_path, {"coreutils": ["/bin/chmod"]})
    index = PackageIndex(str(info), root=str(merged_root(tmp_path)), background=False, recheck=5,
                         clock=lambda: now[0])
    assert index.owner("/usr/lib/probe/probe") == ""
    (info / "probe.list").write_text("/usr/lib/probe/probe\n")
    os.utime(info, ns=(time.time_ns(), time.time_ns() + 10**9))  # the folder changed
    assert index.owner("/usr/lib/probe/probe") == ""  # looked at no more than every 5 s
    now[0] = 6.0
    assert index.owner("/usr/lib/probe/probe") == "probe"
    assert index.owner("/bin/chmod") == "coreutils" and index.statistics().builds == 2


def test_a_background_build_answers_once_done(tmp_path):
    info = dpkg_info(tmp_path, {"coreutils": ["/bin/chmod"]})
    index = PackageIndex(str(info), root=str(merged_root(tmp_path)))
    deadline = time.monotonic() + 10
    while index.owner("/bin/chmod") != "coreutils":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_index_is_bounded_and_counts_what_it_left_out(tmp_path):
    info = dpkg_info(tmp_path, {"a": [f"/usr/lib/a/{i}" for i in range(10)], "b": ["/usr/bin/b"]})
    index = PackageIndex(str(info), max_paths=4, background=False)
    assert index.owner("/usr/lib/a/3") == "a" and index.owner("/usr/lib/a/4") == ""
    assert index.owner("/usr/bin/b") == ""
    assert (index.statistics().paths, index.statistics().skipped) == (4, 7)


def test_no_dpkg_database_owns_nothing(tmp_path):
    index = PackageIndex(str(tmp_path / "nothing"), background=False)
    assert index.owner("/usr/bin/chmod") == "" and index.statistics().paths == 0


def test_package_managers_by_path_not_by_name():
    assert is_manager("/usr/bin/dpkg") and is_manager("/bin/dpkg") and is_manager("/usr/bin/apt-get")
    assert is_manager("/usr/bin/rpm") and is_manager("/usr/bin/unattended-upgrade")
    for not_one in ("/root/dpkg", "/tmp/apt-get", "/usr/bin/dpkg-deb", "/usr/local/bin/dpkg", "dpkg"):
        assert not is_manager(not_one)
    assert merged_usr("/") == tuple((f"/{n}/".encode(), f"/usr/{n}/".encode())
                                    for n in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
                                    if os.path.islink(f"/{n}") and os.readlink(f"/{n}").strip("/") == f"usr/{n}")


# -- the process table ---------------------------------------------------------------


def exec_(pid, ppid, path, *, uid=0, euid=None, filename=None):
    return wire.Exec(pid=pid, ppid=ppid, uid=uid, euid=uid if euid is None else euid,
                     filename=filename or path, exe=path, argv=[path])


def setuid(pid, ppid, old, new, *, uid, call="setresuid", result=0):
    return wire.SetId(pid=pid, ppid=ppid, uid=uid, euid=new, call=call, old=old, new=new, result=result)


def enriched(table, *events):
    for e in events:
        table.enrich(e)
    return events[-1]


def test_maintainer_scripts_run_in_the_package_managers_session(packages):
    table = ProcessTable(packages=packages)
    apt, dpkg, script, chmod, other = (GONE + i for i in range(5))
    me = os.getpid()
    ev = enriched(table, exec_(apt, me, "/usr/bin/apt-get"))
    assert (ev.package, ev.package_session) == ("apt", "/usr/bin/apt-get")
    enriched(table, wire.Fork(pid=apt, ppid=me, child_pid=dpkg), exec_(dpkg, apt, "/usr/bin/dpkg"),
             wire.Fork(pid=dpkg, ppid=apt, child_pid=script))
    ev = enriched(table, exec_(script, dpkg, "/usr/bin/dash", filename="/var/lib/dpkg/info/probe.postinst"))
    assert (ev.package, ev.package_session) == ("", "/usr/bin/dpkg")  # the nearest manager
    ev = enriched(table, wire.Fork(pid=script, ppid=dpkg, child_pid=chmod), exec_(chmod, script, "/usr/bin/chmod"))
    assert (ev.package, ev.package_session) == ("coreutils", "/usr/bin/dpkg")
    ev = enriched(table, wire.Open(pid=chmod, ppid=script, path="/etc/ld.so.cache"))
    assert (ev.package, ev.package_session) == ("coreutils", "/usr/bin/dpkg")
    # The same program outside any: no session.  A copy named like a manager is no manager.
    ev = enriched(table, exec_(other, me, "/usr/bin/chmod"))
    assert (ev.package, ev.package_session) == ("coreutils", "")
    ev = enriched(table, exec_(other, me, "/root/dpkg"))
    assert (ev.package, ev.package_session) == ("", "")
    fields = dict(sigma_events(enriched(table, wire.Open(pid=chmod, ppid=script, path="/etc/shadow")))[0][1])
    assert (fields["Package"], fields["PackageSession"]) == ("coreutils", "/usr/bin/dpkg")
    assert "PackageSession" not in sigma_events(ev)[0][1] and "Package" not in sigma_events(ev)[0][1]


def test_a_session_is_found_up_the_ancestry_of_processes_read_from_proc(packages):
    # Processes the table learns of through /proc (started before the agent)
    # have their session looked up once, through their parents.
    table = ProcessTable(packages=packages)
    table.seed()
    ev = enriched(table, wire.Open(pid=os.getpid(), ppid=os.getppid(), path="/etc/hosts"))
    assert ev.package_session == ""  # pytest descends from no package manager
    assert table.get(os.getpid()).session == "" and table.get(os.getppid()).session == ""


def test_returning_to_an_id_held_is_not_a_gain(packages):
    table = ProcessTable(packages=packages)
    apt, me = GONE + 10, os.getpid()
    enriched(table, exec_(apt, me, "/usr/bin/apt-get", uid=0))
    drop = enriched(table, setuid(apt, me, 0, 42, uid=0))  # into the _apt sandbox
    assert drop.held is False
    back = enriched(table, setuid(apt, me, 42, 0, uid=0))  # and back
    assert back.held is True and dict(sigma_events(back)[0][1])["NewIdHeld"] == "true"
    # The child of a daemon that dropped to 33 held root too (its parent's history is its own).
    child = GONE + 11
    enriched(table, wire.Fork(pid=apt, ppid=me, child_pid=child))
    assert enriched(table, setuid(child, apt, 42, 0, uid=0, call="setuid")).held is True


def test_a_setuid_root_program_run_by_a_user_never_held_root(packages):
    table = ProcessTable(packages=packages)
    helper, me = GONE + 20, os.getpid()
    # The kernel made it effectively root at its exec; its real uid is the user's.
    enriched(table, exec_(helper, me, "/srv/helper", uid=65534, euid=0))
    gain = enriched(table, setuid(helper, me, 0, 0, uid=0, call="setuid"))
    assert gain.held is False and dict(sigma_events(gain)[0][1])["NewIdHeld"] == "false"
    # Once it is root, a round trip of its own is a return.
    enriched(table, setuid(helper, me, 0, 1000, uid=0, call="setresuid"))
    assert enriched(table, setuid(helper, me, 1000, 0, uid=0, call="setresuid")).held is True


def test_a_program_root_drops_into_and_execs_never_held_root(packages):
    # setpriv, su or cron: root drops to a user, then execs the user's
    # program; that program held none of what its process held before.
    table = ProcessTable(packages=packages)
    pid, me = GONE + 25, os.getpid()
    enriched(table, exec_(pid, me, "/usr/bin/setpriv", uid=0))
    assert enriched(table, setuid(pid, me, 0, 65534, uid=65534)).held is False
    enriched(table, exec_(pid, me, "/srv/helper", uid=65534, euid=0))
    assert enriched(table, setuid(pid, me, 0, 0, uid=0, call="setuid")).held is False


def test_roots_setuid_leaves_nothing_to_go_back_to(packages):
    # setuid() by root sets the real, effective and saved ids: a later
    # return to root without an exec is no return but a gain.
    table = ProcessTable(packages=packages)
    pid, me = GONE + 26, os.getpid()
    enriched(table, exec_(pid, me, "/usr/sbin/daemon", uid=0),
             setuid(pid, me, 0, 33, uid=33, call="setuid"))
    assert enriched(table, setuid(pid, me, 33, 0, uid=0, call="setuid")).held is False


def test_other_events_teach_nothing_about_ids(packages):
    # A kernel exploit rewrites the credentials without a set*uid call: the
    # process's next events carry uid 0, and must not make root look held.
    table = ProcessTable(packages=packages)
    exploit, me = GONE + 30, os.getpid()
    enriched(table, exec_(exploit, me, "/home/u/exploit", uid=1000),
             wire.Open(pid=exploit, ppid=me, uid=0, euid=0, path="/etc/shadow"))
    assert enriched(table, setuid(exploit, me, 0, 0, uid=0, call="setuid")).held is False


def test_history_not_known_says_nothing(packages):
    table = ProcessTable(packages=packages)
    first_seen = enriched(table, setuid(GONE + 40, os.getpid(), 42, 0, uid=0))
    assert first_seen.held is None and "NewIdHeld" not in dict(sigma_events(first_seen)[0][1])
    # Group calls have no history kept.
    enriched(table, exec_(GONE + 41, os.getpid(), "/usr/bin/apt-get"))
    group = enriched(table, setuid(GONE + 41, os.getpid(), 42, 0, uid=0, call="setresgid"))
    assert group.held is None


def test_a_process_read_from_proc_held_its_real_uid(packages):
    table = ProcessTable(packages=packages)
    table.seed()
    me = table.get(os.getpid())
    assert me.uids == {os.getuid()}
    ev = enriched(table, setuid(os.getpid(), os.getppid(), os.geteuid(), os.getuid(), uid=os.getuid()))
    assert ev.held is True

