"""docs/ATTACK.md, the ATT&CK coverage matrix, made from what cannot drift: the Linux
techniques of linux_techniques.tsv, the ATT&CK tags of every rule the hive loads by default
(the built-in pack and SigmaHQ's Linux rules), and the attack simulations of simulations.py,
each of which tests/e2e/attacks/test_simulations.py runs through the real sensor and hive.

    .venv/bin/python -m tests.e2e.attacks.matrix           # write docs/ATTACK.md
    .venv/bin/python -m tests.e2e.attacks.matrix --check   # exit 1 if it is stale

(test_matrix.py runs the check.)"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hive.sigma import BUILTIN_RULES, SIGMAHQ_RULES, load_rules

from .simulations import SIMULATIONS

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "ATTACK.md"
TECHNIQUES = Path(__file__).with_name("linux_techniques.tsv")
TEST = "tests/e2e/attacks/test_simulations.py::test_procedure_raises_its_technique"
TACTICS = ("initial-access", "execution", "persistence", "privilege-escalation", "defense-evasion",
           "credential-access", "discovery", "lateral-movement", "collection", "command-and-control",
           "exfiltration", "impact")
_TAG = re.compile(r"attack\.(t\d{4}(?:\.\d{3})?)")

OUT_OF_SIGHT = {
    "T1189": "a browser's exploit: what follows it (a shell, a download) is what the sensor sees",
    "T1190": "an exploit inside a server: its children are seen (SigmaHQ's web-server rules), the exploit is not",
    "T1133": "a login through a VPN or SSH from outside: authentication logs, not system calls",
    "T1200": "hardware",
    "T1566": "mail", "T1566.001": "mail", "T1566.002": "mail", "T1566.003": "a third-party service",
    "T1195.003": "hardware", "T1199": "a partner's access: authentication logs",
    "T1078": "a valid login looks like any other", "T1078.001": "a valid login looks like any other",
    "T1078.003": "a valid login looks like any other",
    "T1203": "an exploit inside a client program: its children are seen, the exploit is not",
    "T1211": "an exploit: what it changes is seen, not the exploit",
    "T1212": "an exploit: what it reads is seen, not the exploit",
    "T1210": "an exploit of another host's service",
    "T1534": "mail or chat", "T1557": "traffic on the wire", "T1557.002": "ARP traffic on the wire",
    "T1110": "attempts at a login service: its logs", "T1110.001": "attempts at a login service: its logs",
    "T1110.002": "offline, possibly on another machine", "T1110.003": "attempts at a login service: its logs",
    "T1110.004": "attempts at a login service: its logs",
    "T1111": "inside a login flow", "T1606": "made elsewhere", "T1606.001": "made elsewhere",
    "T1056.003": "inside a web application",
    "T1498": "network traffic", "T1498.001": "network traffic", "T1498.002": "network traffic",
    "T1499": "network or application load", "T1499.001": "network traffic", "T1499.002": "network traffic",
    "T1499.003": "application load", "T1499.004": "inside an application",
    "T1568": "DNS answers", "T1568.001": "DNS answers", "T1568.002": "DNS names", "T1568.003": "DNS answers",
    "T1573": "the content of traffic", "T1573.001": "the content of traffic", "T1573.002": "the content of traffic",
    "T1001": "the content of traffic", "T1001.001": "the content of traffic", "T1001.002": "the content of traffic",
    "T1001.003": "the content of traffic", "T1132": "the content of traffic", "T1132.001": "the content of traffic",
    "T1132.002": "the content of traffic", "T1008": "which of its channels a program uses",
    "T1104": "the content of traffic", "T1665": "infrastructure on the internet",
    "T1092": "removable media", "T1025": "removable media", "T1052": "removable media", "T1052.001": "USB",
    "T1011": "another network medium", "T1011.001": "Bluetooth",
    "T1030": "the size of transfers", "T1029": "the timing of transfers", "T1020": "inside a program",
    "T1565.002": "traffic on the wire", "T1565.003": "inside a running program",
    "T1491.002": "another host's web site", "T1495": "firmware", "T1542": "firmware and boot",
    "T1542.003": "the boot sector", "T1080": "files on a share: another host",
    "T1039": "a network share's server", "T1114": "a mail server or client's files",
    "T1213": "a repository's server", "T1010": "a desktop session (servers have none)",
    "T1123": "a desktop session", "T1125": "a desktop session", "T1113": "a desktop session",
    "T1115": "a desktop session", "T1056": "keystrokes", "T1056.001": "keystrokes (PAM and tty hooks not read)",
}
"""Why a technique is not covered, where nothing the sensor records can show it."""

NOTES = [
    ("Print History File Contents, Access of Sudoers File Content (SigmaHQ)", "attack.t1592.004",
     "reconnaissance of a victim's client configuration; reading this host's history is T1552.003, "
     "sudoers T1087.001/T1548.003"),
    ("History File Deletion (SigmaHQ)", "attack.t1565.001", "history removed: T1070.003, not data manipulation"),
    ("Use Of Hidden Paths Or Files (SigmaHQ, auditd)", "attack.t1574.001",
     "a Windows DLL search-order technique; a hidden file made is T1564.001"),
    ("Program Executions in Suspicious Folders (SigmaHQ, auditd)", "attack.t1587, attack.t1584",
     "resource development happens elsewhere; a program run from /tmp is T1204.002"),
    ("Possible Coin Miner CPU Priority Param (SigmaHQ)", "attack.t1068", "a miner's option: T1496"),
    ("Binary Padding - Linux (SigmaHQ, auditd)", "attack.t1027.001",
     "fires on any dd without of= (dd if=/proc/PID/mem read a process's memory: T1003.007)"),
    ("File Time Attribute Change - Linux (SigmaHQ, auditd)", "attack.t1070.006",
     "fires on every touch, with or without a chosen date"),
    ("Linux Shell Pipe to Shell (SigmaHQ)", "attack.t1140", "fires on a reverse shell's | sh as well: nothing decoded"),
    ("Suspicious Curl File Upload - Linux (SigmaHQ)", "attack.t1105", "an upload is exfiltration, not ingress"),
    ("Linux Reverse Shell Indicator (SigmaHQ, network_connection)", "attack.t1059.004",
     "any bash connecting out (a /dev/tcp probe of a port too)"),
    ("Container Residence Discovery Via Proc Virtual FS, Docker Container Discovery Via Dockerenv Listing "
     "(SigmaHQ)", "attack.t1082", "checking for a container is T1613 (or T1497.001)"),
    ("Potentially Suspicious Execution From Tmp Folder (SigmaHQ)", "attack.t1036",
     "running from /tmp is not masquerading by itself (T1204.002)"),
    ("Linux Setuid/Setgid Capability Set on a Binary via Setcap Utility (SigmaHQ)", "attack.t1554",
     "the binary is not changed, its capabilities are: T1548"),
    ("System Shutdown/Reboot - Linux (SigmaHQ, auditd)", "attack.t1529",
     "its keywords 0 and 6 match any argument or argc: it fired on a grep for __init__"),
    ("Execution From a World-Writable Directory (ours, seed)", "attack.t1036.005",
     "a program run from /tmp is not masquerading by itself; kept beside T1204.002 for the seed's rule"),
    ("Process Switched to the Nobody User (ours, seed)", "attack.t1134",
     "Access Token Manipulation is a Windows technique; on Linux a set*id call has no ATT&CK id of its own"),
    ("SigmaHQ rules tagged attack.t1685*, attack.t1686, attack.t1690", "",
     "IDs of an ATT&CK release after v16 (Defense Evasion split); listed under 'Tags outside this list'"),
]
"""Shipped rules whose tag does not say what happened, as the simulations showed."""


@dataclass(frozen=True)
class Technique:
    tactic: str
    id: str
    name: str


def techniques() -> list[Technique]:
    out = []
    for line in TECHNIQUES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tactic, tid, name = line.split("\t")
            out.append(Technique(tactic, tid, name))
    return out


def rules_by_technique() -> dict[str, list[str]]:
    rules = load_rules([BUILTIN_RULES, SIGMAHQ_RULES])
    found: dict[str, set[str]] = defaultdict(set)
    for rule in (*rules.index.rules, *rules.correlations):
        source = "ours" if Path(rule.path).is_relative_to(BUILTIN_RULES) else "SigmaHQ"
        for tag in rule.tags:
            m = _TAG.fullmatch(tag.lower())
            if m:
                found[m.group(1).upper()].add(f"{rule.title} ({source})")
    return {t: sorted(titles) for t, titles in found.items()}


def _cell(titles: list[str], most: int = 3) -> str:
    shown = "; ".join(t.replace("|", "/") for t in titles[:most])
    return shown + (f"; +{len(titles) - most} more" if len(titles) > most else "")


def render() -> str:
    listed = techniques()
    rules = rules_by_technique()
    proofs: dict[str, list[str]] = defaultdict(list)
    for sim in SIMULATIONS:
        hooks = f" ({'+'.join(sim.hooks)} hook)" if sim.hooks else ""
        proofs[sim.technique.upper()].append(sim.spelling + hooks)
    hooked = {h for sim in SIMULATIONS for h in sim.hooks}
    ids = {t.id for t in listed}
    proven = sorted(ids & set(proofs))
    ruled = sorted((ids & set(rules)) - set(proofs))
    lines = [
        "# ATT&CK coverage on Linux",
        "",
        "Generated by `.venv/bin/python -m tests.e2e.attacks.matrix` from the rules the hive loads by",
        "default (our pack and SigmaHQ's Linux rules), the attack simulations of",
        "`tests/e2e/attacks/simulations.py` and the technique list `tests/e2e/attacks/linux_techniques.tsv`",
        "(ATT&CK Enterprise v16, Linux platform). Do not edit: `tests/e2e/attacks/test_matrix.py` fails",
        "when this file is stale.",
        "",
        "A technique is **proven** when a procedure of ours, run on a real machine through the real",
        "sensor, agent and hive (`" + TEST + "`, one test per",
        "spelling), raises an alert carrying its tag (`attack.tNNNN[.NNN]`) from that procedure's own",
        "processes. **Rules only**: a loaded rule carries the tag, but no simulation proves it here.",
        "",
        f"- proven live: **{len(proven)}** techniques and sub-techniques, "
        f"{sum(len(proofs[t]) for t in proven)} spellings "
        f"({len(ids & {s.technique.upper() for s in SIMULATIONS if not s.hooks})} without the hooks below)",
        f"- of these spellings, {sum(bool(sim.hooks) for sim in SIMULATIONS)} need the sensor's "
        f"{', '.join(sorted(hooked))} hooks (issue 12's process events): a tree without them skips those",
        f"- rules only: {len(ruled)}",
        f"- not covered: {len(ids - set(proofs) - set(rules))} (why, in each row)",
        "",
    ]
    for tactic in TACTICS:
        rows = [t for t in listed if t.tactic == tactic]
        covered = sum(t.id in proofs for t in rows)
        lines += [f"## {tactic.replace('-', ' ').title()} ({covered} of {len(rows)} proven)", "",
                  "| ID | Technique | Rules | Proven by |", "| --- | --- | --- | --- |"]
        for t in rows:
            spellings = proofs.get(t.id)
            proof = (f"`{t.id.lower()}-*`: " + ", ".join(spellings)) if spellings else (
                "rules only" if t.id in rules else
                f"not covered: {OUT_OF_SIGHT[t.id]}" if t.id in OUT_OF_SIGHT else "not covered: no rule yet")
            lines.append(f"| {t.id} | {t.name} | {_cell(rules.get(t.id, [])) or '-'} | {proof} |")
        lines.append("")
    outside = sorted(set(rules) - ids)
    lines += ["## Tags outside this list", "",
              "Rule tags that name no Linux technique of v16: later ATT&CK IDs, or techniques of other",
              "platforms.", "", "| Tag | Rules |", "| --- | --- |"]
    lines += [f"| {t} | {_cell(rules[t])} |" for t in outside]
    lines += ["", "## Tags that do not say what happened", "", "| Rules | Tag | What happened |",
              "| --- | --- | --- |"]
    lines += [f"| {who} | {tag or '-'} | {why} |" for who, tag, why in NOTES]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run .venv/bin/python -m tests.e2e.attacks.matrix")
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
