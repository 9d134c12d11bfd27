"""How each wire event becomes Sigma logsources (hive/sigma/_fields.py), with hand-made
events: the kinds of issue 12 (file names and attributes, ptrace, signals, BPF, mounts,
fileless execs) and auditd's records, through which SigmaHQ's ``service: auditd`` rules run."""

import os

import pytest

from hive.sigma import FIELDS, SENSOR_KINDS, SIGMAHQ_RULES, RuleEngine, check_rules, load_rules, sigma_events
from wire import Bind, Bpf, Connect, Exec, File, Fork, Mount, Open, Ptrace, SetId, Signal

AUDITD = SIGMAHQ_RULES / "rules-linux" / "auditd"


def sources(event) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for category, fields in sigma_events(event):
        assert set(fields) <= FIELDS[category], (category, set(fields) - FIELDS[category])
        out.setdefault(category, []).append(fields)
    return out


def one(event, category: str) -> dict:
    [fields] = sources(event)[category]
    return fields


def records(event, kind: str) -> list[dict]:
    return [f for f in sources(event).get("auditd", []) if f["type"] == kind]


def test_rename_is_a_name_created_a_rename_and_auditd_paths():
    event = File(pid=7, op="rename", path="/etc/cron.d/job", source="/tmp/job", image="/usr/bin/mv", uid=0)
    got = sources(event)
    assert set(got) == {"file_event", "file_rename", "auditd"}
    fields = one(event, "file_event")
    assert (fields["TargetFilename"], fields["SourceFilename"], fields["Operation"]) == \
        ("/etc/cron.d/job", "/tmp/job", "rename")
    assert fields["Image"] == "/usr/bin/mv" and fields["ProcessId"] == 7 and fields["Result"] == 0
    assert one(event, "file_rename") == fields
    assert {(r["name"], r["nametype"]) for r in records(event, "PATH")} == \
        {("/etc/cron.d/job", "CREATE"), ("/tmp/job", "DELETE")}
    [call] = records(event, "SYSCALL")
    assert (call["SYSCALL"], call["exe"], call["success"], call["uid"]) == ("rename", "/usr/bin/mv", "yes", 0)


@pytest.mark.parametrize("op", ["link", "symlink", "mknod"])
def test_links_and_nodes_are_names_created(op):
    event = File(op=op, path="/root/.bash_history", source="/dev/null")
    assert set(sources(event)) == {"file_event", "auditd"}
    assert one(event, "file_event")["SourceFilename"] == "/dev/null"
    assert records(event, "SYSCALL")[0]["SYSCALL"] == op


@pytest.mark.parametrize("op", ["unlink", "rmdir"])
def test_unlink_and_rmdir_are_file_delete(op):
    event = File(op=op, path="/var/log/auth.log", image="/usr/bin/rm")
    assert set(sources(event)) == {"file_delete", "auditd"}
    assert one(event, "file_delete")["TargetFilename"] == "/var/log/auth.log"
    assert records(event, "PATH") == [{"type": "PATH", "name": "/var/log/auth.log", "nametype": "DELETE"}]


def test_chmod_chown_and_xattrs_are_file_change():
    fields = one(File(op="chmod", path="/srv/sh", mode=0o104755), "file_change")
    assert fields["Mode"] == "4755" and "Owner" not in fields and "Group" not in fields
    assert one(File(op="chmod", path="/srv/sh", mode=0o644), "file_change")["Mode"] == "0644"
    fields = one(File(op="chown", path="/srv/sh", owner=0, group=-1), "file_change")
    assert (fields["Owner"], "Group" in fields, "Mode" in fields) == (0, False, False)
    fields = one(File(op="setxattr", path="/srv/py", xattr="security.capability"), "file_change")
    assert (fields["Xattr"], fields["Operation"]) == ("security.capability", "setxattr")
    assert one(File(op="removexattr", path="/srv/py", xattr="user.x"), "file_change")["Xattr"] == "user.x"


def test_a_failed_file_call_changed_nothing():
    got = sources(File(op="unlink", path="/var/log/x", result=-13))
    assert set(got) == {"auditd"}
    assert [r["success"] for r in got["auditd"] if r["type"] == "SYSCALL"] == ["no"]


def test_ptrace_signal_bpf_and_mount():
    fields = one(Ptrace(pid=9, request="attach", target_pid=42, target_comm="sshd", image="/usr/bin/gdb"), "ptrace")
    assert (fields["Request"], fields["TargetProcessId"], fields["TargetComm"], fields["Image"]) == \
        ("attach", 42, "sshd", "/usr/bin/gdb")
    fields = one(Signal(signal=9, target_pid=77, target_comm="immune-node"), "signal")
    assert (fields["Signal"], fields["TargetProcessId"], fields["TargetComm"]) == (9, 77, "immune-node")
    fields = one(Bpf(command="prog_load", prog_type="kprobe", prog_name="hide", result=5), "bpf")
    assert (fields["Command"], fields["ProgramType"], fields["ProgramName"], fields["Result"]) == \
        ("prog_load", "kprobe", "hide", 5)
    fields = one(Mount(call="mount", source="/dev/sda1", target="/mnt", fstype="ext4", flags=1, container="c1"), "mount")
    assert (fields["Call"], fields["Source"], fields["Target"], fields["FsType"], fields["Flags"]) == \
        ("mount", "/dev/sda1", "/mnt", "ext4", 1)
    assert fields["ContainerId"] == "c1"
    for event, call in ((Ptrace(request="seize"), "ptrace"), (Signal(signal=15), "kill"),
                        (Bpf(command="prog_load"), "bpf"), (Mount(call="umount"), "umount")):
        assert records(event, "SYSCALL")[0]["SYSCALL"] == call


def test_exec_fileless_and_its_auditd_records():
    event = Exec(pid=5, ppid=4, euid=33, filename="/proc/self/fd/3", exe="/memfd:x (deleted)",
                 argv=["sysctl", "-w", "kernel.randomize_va_space=0"], fileless=True)
    assert one(event, "process_creation")["Fileless"] == "true"
    assert "Fileless" not in one(Exec(filename="/bin/ls", argv=["ls"]), "process_creation")
    [execve] = records(event, "EXECVE")
    assert execve == {"type": "EXECVE", "argc": 3, "a0": "sysctl", "a1": "-w", "a2": "kernel.randomize_va_space=0"}
    [call] = records(event, "SYSCALL")
    assert (call["SYSCALL"], call["exe"], call["euid"], call["pid"], call["ppid"]) == \
        ("execve", "/memfd:x (deleted)", 33, 5, 4)
    assert sources(Exec(filename="/nope", result=-2)) == {}  # a failed lookup: no process


def test_only_writes_give_auditd_a_path_record():
    assert set(sources(Open(path="/etc/shadow", flags=os.O_RDONLY))) == {"file_access"}
    assert records(Open(path="/etc/ld.so.preload", flags=os.O_WRONLY | os.O_CREAT), "PATH") == \
        [{"type": "PATH", "name": "/etc/ld.so.preload", "nametype": "CREATE"}]
    assert records(Open(path="/etc/hosts", flags=os.O_WRONLY), "PATH")[0]["nametype"] == "NORMAL"


def test_sigmahq_auditd_rules_load_except_those_needing_audit_keys_or_units():
    report = check_rules(AUDITD)
    failed = {f.path.name: f.reason for f in report.failures}
    assert len(report.rules) >= 40, report.format()
    assert all("not provided for category auditd" in r and (" key " in r or " unit " in r)
               for r in failed.values()), failed


def titles(events) -> set[str]:
    engine = RuleEngine()
    engine.load(AUDITD)
    return {a.title for e in events for a in engine.process(e) if hasattr(a, "title")}


@pytest.mark.parametrize("event, title", [
    (Exec(filename="/usr/sbin/sysctl", argv=["sysctl", "-w", "kernel.randomize_va_space=0"], agent="h"),
     "ASLR Disabled Via Sysctl or Direct Syscall - Linux"),
    (Exec(filename="/usr/bin/dd", argv=["dd", "if=/dev/zero", "of=/srv/db"], agent="h"),
     "Overwriting the File with Dev Zero or Null"),
    (Open(path="/etc/ld.so.preload", flags=os.O_WRONLY | os.O_CREAT, image="/usr/bin/tee", agent="h"),
     "Modification of ld.so.preload"),
    (Open(path="/etc/systemd/system/x.service", flags=os.O_WRONLY | os.O_CREAT, image="/usr/bin/tee", agent="h"),
     "Systemd Service Creation"),
    (File(op="mknod", path="/dev/shm/p", agent="h"), "Special File Creation via Mknod Syscall"),
])
def test_shipped_auditd_rules_fire_on_our_events(event, title):
    assert title in titles([event])


def test_shipped_auditd_rules_stay_quiet_on_ordinary_work():
    quiet = [Exec(filename="/usr/bin/ls", argv=["ls", "-la"], agent="h"),
             Open(path="/srv/app/data.json", flags=os.O_WRONLY | os.O_CREAT, image="/usr/bin/python3", agent="h"),
             File(op="rename", path="/srv/app/data.json", source="/srv/app/data.json.tmp", agent="h")]
    assert titles(quiet) == set()


def test_the_whole_set_loads_with_auditd():
    report = load_rules([SIGMAHQ_RULES]).report
    assert sum(r.category == "auditd" for r in report.rules) >= 40


@pytest.mark.parametrize("event", [
    Exec(filename="/bin/sh"), Open(path="/etc/passwd", flags=os.O_WRONLY), Open(path="/etc/shadow"),
    File(op="rename", path="/a", source="/b"), File(op="unlink", path="/a"), File(op="chmod", path="/a"),
    File(op="unlink", path="/a", result=-2), Connect(), Bind(), Fork(), SetId(), Ptrace(), Signal(), Bpf(),
    Mount(),
], ids=lambda e: e.__struct_config__.tag)
def test_each_category_names_the_sensor_kinds_it_is_made_from(event):
    """An agent's edge rules have the sensor wake at once for the kinds of
    their categories (SENSOR_KINDS); a kind missing there would be batched."""
    assert set(SENSOR_KINDS) == set(FIELDS)
    kind = event.__struct_config__.tag
    made = {category for category, _ in sigma_events(event)}
    assert made, "every sample stands for some category"
    assert all(kind in SENSOR_KINDS[c] for c in made), {c: SENSOR_KINDS[c] for c in made}
