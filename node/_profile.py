"""``immune-node profile list|show|accept|state|propose``: the learned
profiles the agents sent (``wire.Profile`` events in the hive's store), an
operator's acceptance of a novelty alert, and a least-privilege sensor
policy proposed from a profile.

:func:`propose` is a plain function of a profile: the rules that allow what
it holds and audit or refuse the rest, put first in a policy (within a hook
the first matching rule wins)."""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import re
import sys
import time

import msgspec

from ._config import Config
from ._fleet import FleetCliError, _actor, _store

SENSITIVE = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
             "/etc/sudoers", "/etc/sudoers.d/*", "/root/.ssh/*", "/etc/ssh/ssh_host_*", "/etc/ssl/private/*")
"""Opens a proposal refuses unless the profile holds them: credentials (a
block rule's wildcards may only be in the last name: fanotify marks one
folder)."""


def _slug(workload: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", workload).strip("-")[:40] or "workload"


def _glob_literal(path: str) -> str:
    """A profile path as a policy glob: its ``*`` and ``**`` stay wildcards,
    a ``[`` or ``?`` in a name is matched as itself."""
    return path.replace("[", "[[]").replace("?", "[?]")


def _complement(held: list[str]) -> list[str]:
    """The networks outside ``held`` (addresses or CIDRs), IPv4 and IPv6."""
    nets = []
    for h in held:
        try:
            nets.append(ipaddress.ip_network(h, strict=False))
        except ValueError:
            continue
    out: list[str] = []
    for everything in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")):
        rest = [everything]
        for n in nets:
            if n.version != everything.version:
                continue
            nxt = []
            for r in rest:
                if n.subnet_of(r):
                    nxt.extend(r.address_exclude(n))
                elif not r.subnet_of(n):
                    nxt.append(r)
            rest = nxt
        out += [str(n) for n in ipaddress.collapse_addresses(rest)]
    return out


def _port_ranges(ports: set[int], low: int = 1, high: int = 1024) -> list[str | int]:
    """``low``-``high`` without ``ports``, as the policy's ranges."""
    out: list[str | int] = []
    start = None
    for p in range(low, high + 2):
        free = p <= high and p not in ports
        if free and start is None:
            start = p
        elif not free and start is not None:
            out.append(start if start == p - 1 else f"{start}-{p - 1}")
            start = None
    return out


def scope_hint(workload: str) -> str:
    kind, _, name = workload.partition(":")
    if kind == "unit":
        return f'sensor.scope = "cgroup:/system.slice/{name}"'
    if kind == "image":
        return f'sensor.scope = "container:image={name}"'
    return "sensor.scope = \"cgroup:PATH\" (the workload's cgroup)"


def unit_cgroups(unit: str) -> list[str]:
    """Where systemd puts a system service's cgroup: in system.slice, or in
    a slice of its own there (a template's instances: system-NAME.slice)."""
    name = exact_glob(unit)
    return [f"/system.slice/{name}", f"/system.slice/*.slice/{name}"]


def exact_glob(path: str) -> str:
    """A name (a cgroup path, an image) as a glob matching only itself: its
    ``*`` too is matched as itself."""
    return _glob_literal(path).replace("*", "[*]")


def selector(workload: str, cgroups: list[str] | None = None) -> str:
    """The ``match`` lines that select ``workload`` (every rule of a
    proposal carries them, so it can be pushed to an agent that watches
    other workloads too); "" when its name says no place (``cgroup:ID``,
    an id of one boot) and ``cgroups`` gives none."""
    if cgroups:
        return f"match.cgroup = {_toml(list(cgroups))}\n"
    kind, _, name = workload.partition(":")
    if kind == "image":
        return f"match.container_image = {_toml(exact_glob(name))}\n"
    if kind == "unit":
        return f"match.cgroup = {_toml(unit_cgroups(name))}\n"
    return ""


def cgroups_of(paths: list[str], given: list[str] | None = None) -> list[str] | None:
    """The ``match.cgroup`` globs of a proposal: ``given`` (``--cgroup``,
    an override), else the paths the profiles carry, each matching only
    itself; None: neither (the workload's name must say)."""
    if given:
        return list(given)
    return sorted({exact_glob(p) for p in paths if p}) or None


def propose(profile, mode: str = "audit", cgroups: list[str] | None = None) -> str:
    """The rules (TOML) that allow what ``profile`` holds and ``mode``
    (audit or block) the rest for its workload: execs, opens of credential
    files, connects, binds of ports up to 1024.  Each rule selects the
    workload (``selector``; ``cgroups``: its cgroup v2 path globs, instead
    of the path the profile carries or those its name gives)."""
    from kmod import Policy

    if mode not in ("audit", "block"):
        raise ValueError(f"mode {mode!r}: audit or block")
    w = profile.workload
    slug = f"profile-{_slug(w)}"
    items = {k: [i.split("\t")[1:] for i in v] for k, v in profile.items.items()}
    select = selector(w, cgroups_of([getattr(profile, "cgroup_path", "")], cgroups))
    shown = "".join(c if c.isprintable() else "?" for c in w)  # a comment is one line of text
    lines = [
        f"# Proposed from the learned profile of {shown} (revision {profile.revision}): {mode} what it never did.",
        "# Every rule selects the workload: the proposal can go to any agent that runs it." if select else
        f"# {shown} names no cgroup path and its profile carries none (its cgroup was gone when it was "
        f"learned: give one, propose --cgroup PATH), so these rules select nothing: "
        f"run this on an agent scoped to it ({scope_hint(shown)}).",
        "",
    ]

    def rule(name: str, hook: str, action: str, description: str, match: str) -> None:
        lines.extend([f"[[rule]]", f"name = {_toml(f'{slug}-{name}'[:64])}", f'hook = "{hook}"',
                      f'action = "{action}"', f"description = {_toml(description)}", match.rstrip("\n"), ""])

    images = sorted({_glob_literal(f[0]) for f in items.get("exec", []) if f[0].startswith("/")})
    if images:
        rule("exec", "exec", "allow", f"what {w} was seen to run", f"match.path = {_toml(images)}\n" + select)
    rule("exec-other", "exec", mode, f"anything else {w} runs", 'match.path = "/**"\n' + select)
    held_secrets = sorted({_glob_literal(f[0]) for k in ("read", "write") for f in items.get(k, [])
                           if any(_glob_match(g, f[0]) for g in SENSITIVE)})
    if held_secrets:
        rule("secrets", "open", "allow", f"credential files {w} was seen to open",
             f"match.path = {_toml(held_secrets)}\n" + select)
    rule("secrets-other", "open", mode, f"credential files {w} never opened",
         f"match.path = {_toml(list(SENSITIVE))}\n" + select)
    peers = [f[1] for f in items.get("connect", [])]
    if "*" not in peers:
        others = _complement(peers)
        if others:
            rule("connect-other", "connect", mode, f"peers {w} never connected to",
                 f"match.address = {_toml(others)}\n" + select)
    bound = {int(f[2]) for f in items.get("bind", []) if f[2].isdigit()}
    if not any(f[2] == "*" for f in items.get("bind", [])):
        ports = _port_ranges(bound)
        if ports:
            rule("bind-other", "bind", mode, f"ports up to 1024 {w} never listened on",
                 f"match.port = {_toml(ports)}\n" + select)
    text = "\n".join(lines)
    Policy.parse("version = 1\n" + text, origin=f"proposal for {w}")  # what it writes loads
    return text


def _glob_match(glob: str, path: str) -> bool:
    from kmod._policy import glob_regex

    return bool(glob_regex(glob).match(path))


def _toml(value) -> str:
    # JSON strings, numbers and arrays are TOML's too, once DEL (which JSON
    # leaves as it is and TOML refuses) is escaped.
    return msgspec.json.encode(value).decode().replace("\x7f", "\\u007f")


def merged(base: str, rules: str) -> str:
    """``base`` with ``rules`` before its first rule, so they win in their hooks."""
    at = re.search(r"^\[\[rule\]\]", base, re.MULTILINE)
    if at is None:
        return base.rstrip("\n") + "\n\n" + rules
    return base[:at.start()] + rules + "\n" + base[at.start():]


# -- the store's view ----------------------------------------------------------


def latest(store, agent: str | None = None) -> dict[tuple[str, str], object]:
    """(agent, workload) -> its newest ``wire.Profile`` event."""
    out: dict[tuple[str, str], object] = {}
    for ev in store.events(kind="profile", agent=agent, limit=1_000_000):
        key = (ev.agent, ev.workload)
        if key not in out or (ev.revision, ev.time) > (out[key].revision, out[key].time):
            out[key] = ev
    return out


def _found(store, workload: str, agent: str | None) -> list[tuple[str, object]]:
    """(agent, profile) of each agent (or ``agent``) that learns ``workload``."""
    found = sorted((k, v) for k, v in latest(store, agent).items() if k[1] == workload)
    if not found:
        raise FleetCliError(f"no profile of {workload!r}" + (f" from {agent}" if agent else "")
                            + " (`immune-node profile list` shows them)")
    from agent._profile import decode_profile

    out = []
    for (name, _), ev in found:
        if not ev.body:
            raise FleetCliError(f"{workload} on {name}: its profile is too large to send; only its size is known")
        try:
            p = decode_profile(ev.body)
        except ValueError as e:
            raise FleetCliError(f"{workload} on {name}: {e}") from None
        out.append((name, p))
    return out


def _one(store, workload: str, agent: str | None, found: list | None = None):
    """(agents, profile): ``workload``'s profile on ``agent``, or without it
    the profiles of every agent that learns it merged (the same image across
    the fleet): what any of them held, the least advanced state, the cgroup
    path they agree on ("" if they differ: ``cmd_propose`` selects each)."""
    from agent._profile import STATES, Profile

    found = found if found is not None else _found(store, workload, agent)
    agents = [name for name, _ in found]
    profiles = [p for _, p in found]
    if len(profiles) == 1:
        return agents, profiles[0]
    paths = {p.cgroup_path for p in profiles}
    items: dict[str, set[str]] = {}
    for p in profiles:
        for kind, held in p.items.items():
            items.setdefault(kind, set()).update(held)
    return agents, Profile(
        workload=workload, state=min((p.state for p in profiles), key=lambda s: STATES.index(s) if s in STATES else 0),
        started=min(p.started for p in profiles), changed=max(p.changed for p in profiles),
        revision=max(p.revision for p in profiles), events=sum(p.events for p in profiles),
        items={k: sorted(v) for k, v in items.items()},
        pending={i: t for p in profiles for i, t in p.pending.items()},
        cgroup_path=paths.pop() if len(paths) == 1 else "")


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    from .cli import _table

    store = _store(cfg, readonly=True)
    try:
        rows = latest(store, args.agent)
    finally:
        store.close()
    if not rows:
        print("no profiles yet (agents send one when a workload starts learning)")
        return 0
    table = [("AGENT", "WORKLOAD", "STATE", "REVISION", "ITEMS", "SENT")]
    for (agent, workload), ev in sorted(rows.items()):
        table.append((agent, workload, ev.state, str(ev.revision), str(ev.items),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ev.time / 1e9))))
    _table(table)
    return 0


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    from agent._profile import KINDS, describe

    store = _store(cfg, readonly=True)
    try:
        agents, p = _one(store, args.workload, args.agent)
    finally:
        store.close()
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode({"agents": agents, **msgspec.structs.asdict(p)}) + b"\n")
        return 0
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.started))
    print(f"{p.workload} on {', '.join(agents)}{' (merged)' if len(agents) > 1 else ''}: {p.state}, "
          f"revision {p.revision}, {p.events} events since {since} UTC")
    if p.cgroup_path:
        print(f"  cgroup {p.cgroup_path}")
    elif p.workload.startswith("cgroup:"):
        print("  cgroup path not known (gone when learned): `profile propose --cgroup PATH` gives it")
    for kind in KINDS:
        for item in p.items.get(kind, []):
            print(f"  {describe(item)}")
    for item, when in sorted(p.pending.items()):
        print(f"  novel, not accepted: {describe(item)} (alerted {time.strftime('%H:%M:%S', time.gmtime(when))})")
    return 0


def _request(cfg: Config, agent: str, params: dict, alert: str = "") -> str:
    from hive.playbook import Records

    from ._trees import hive_addresses

    store = _store(cfg)
    try:
        a = Records(store.db).run("update_profile", agent, params, by=_actor(), alert=alert,
                                  protected=hive_addresses(cfg.hive.listen))
    except ValueError as e:
        raise FleetCliError(f"refused: {e}") from None
    finally:
        store.close()
    return a.id


def cmd_accept(args: argparse.Namespace, cfg: Config) -> int:
    import wire

    store = _store(cfg, readonly=True)
    try:
        alerts = [a for a in store.alerts(level="novel", limit=1_000_000) if a.id.startswith(args.alert)]
    finally:
        store.close()
    if len({a.id for a in alerts}) != 1:
        raise FleetCliError(f"no novelty alert {args.alert!r}" if not alerts
                            else f"{args.alert!r} names {len(alerts)} alerts: give more of the id")
    alert = alerts[0]
    edge = next((e for e in alert.events if type(e) is wire.Edge and e.novel), None)
    if edge is None:
        raise FleetCliError(f"alert {alert.id} names no profile items")
    action = _request(cfg, alert.agent, {"workload": edge.workload, "accept": list(edge.novel)}, alert.id)
    print(f"accepting into {edge.workload} on {alert.agent}: "
          + "; ".join(_describe(i) for i in edge.novel)
          + f" (action {action}; `immune-node actions` shows the agent's answer)")
    return 0


def cmd_state(args: argparse.Namespace, cfg: Config) -> int:
    store = _store(cfg, readonly=True)
    try:
        agents, _p = _one(store, args.workload, args.agent)
    finally:
        store.close()
    for name in agents:
        action = _request(cfg, name, {"workload": args.workload, "state": args.state})
        print(f"{args.workload} on {name}: to {args.state} (action {action})")
    return 0


def _describe(item: str) -> str:
    from agent._profile import describe

    return describe(item)


def _policy_in_force(store, agent: str) -> tuple[str, str]:
    """(where from, text): the policy of the newest bundle that selects the
    agent, else the built-in default (an agent's own file is not known here)."""
    import fleet
    from kmod import DEFAULT_POLICY

    labels = store.labels().get(agent, {})
    for row in store.bundles(limit=1000):
        if fleet.selects(row.labels, labels):
            from ._fleet import _decoded

            b = _decoded(row)
            if b.policy:
                return f"bundle {row.name} v{row.version}", b.policy
    return "the built-in default policy", DEFAULT_POLICY.read_text(encoding="utf-8")


def cmd_propose(args: argparse.Namespace, cfg: Config) -> int:
    from kmod import PolicyError

    store = _store(cfg, readonly=True)
    try:
        found = _found(store, args.workload, args.agent)
        agents, p = _one(store, args.workload, args.agent, found)
        origin, base = _policy_in_force(store, agents[0])
    finally:
        store.close()
    # Each agent's own path: merged, the same workload may sit in different cgroups.
    cgroups = cgroups_of([q.cgroup_path for _, q in found], args.cgroup)
    unknown = [name for name, q in found if not q.cgroup_path] if args.workload.startswith("cgroup:") else []
    if args.base:
        origin = args.base
        try:
            base = open(args.base, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise FleetCliError(f"--base {args.base}: cannot be read: {e}") from None
    try:
        text = merged(base, propose(p, args.mode, cgroups))
    except (ValueError, PolicyError) as e:
        raise FleetCliError(f"cannot propose a policy for {args.workload}: {e}") from None
    out = args.out or f"profile-{_slug(args.workload)}-{args.mode}.toml"
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.writelines(difflib.unified_diff(base.splitlines(keepends=True), text.splitlines(keepends=True),
                                               fromfile=f"a/{origin}", tofile=f"b/{out}"))
    if selector(args.workload, cgroups):
        print(f"\nwrote {out} ({args.mode} mode); its rules select {args.workload}"
              + (f" by cgroup {', '.join(cgroups)}" if cgroups else "")
              + ", on any agent that runs it: "
              f"immune-node policy push NAME --policy {out} --labels KEY=VALUE")
        if unknown and not args.cgroup:
            print(f"note: the cgroup path of {args.workload} on {', '.join(unknown)} is not known "
                  f"(gone when learned): the rules do not select it there; --cgroup PATH gives it")
    else:
        print(f"\nwrote {out} ({args.mode} mode); its rules select nothing ({args.workload} names no cgroup path "
              f"and its profile carries none, the cgroup was gone when learned: --cgroup PATH is needed), "
              f"so only on an agent scoped to the workload "
              f"({scope_hint(args.workload)}): immune-node policy push NAME --policy {out} --labels KEY=VALUE")
    return 0


def add_parsers(add) -> None:
    from .cli import _common

    p = add("profile", None, "the learned profiles of workloads: list, show, accept novelty, propose a policy",
            "Learned self: each agent learns what each workload (a systemd service, a container image, a cgroup) "
            "runs, opens, connects to, binds and which uids it takes; once stable, anything else is a 'novel' "
            "alert. `accept ALERT` puts what an alert found into the profile; `propose WORKLOAD` writes a sensor "
            "policy that allows what the profile holds and audits or blocks the rest.", common=False)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("list", help="every agent's profiles, their state and size")
    c.add_argument("--agent", metavar="NAME")
    c.set_defaults(fn=cmd_list)
    _common(c)
    c = actions.add_parser("show", help="what one workload's profile holds")
    c.add_argument("workload", metavar="WORKLOAD", help="as `profile list` names it (unit:web.service, ...)")
    c.add_argument("--agent", metavar="NAME", help="one agent's (default: every agent's that learns it, merged)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_show)
    _common(c)
    c = actions.add_parser("accept", help="put what a novelty alert found into its workload's profile")
    c.add_argument("alert", metavar="ALERT", help="the alert's id (or its start)")
    c.set_defaults(fn=cmd_accept)
    _common(c)
    c = actions.add_parser("state", help="move a profile to learning (learn again), stable or enforcing")
    c.add_argument("workload", metavar="WORKLOAD")
    c.add_argument("state", choices=["learning", "stable", "enforcing"])
    c.add_argument("--agent", metavar="NAME")
    c.set_defaults(fn=cmd_state)
    _common(c)
    c = actions.add_parser("propose", help="write a least-privilege sensor policy from a profile, as a diff")
    c.add_argument("workload", metavar="WORKLOAD")
    c.add_argument("--agent", metavar="NAME")
    c.add_argument("--mode", choices=["audit", "block"], default="audit",
                   help="audit first (what would have been refused), then block")
    c.add_argument("--base", metavar="FILE", help="the policy to add to (default: the one in force)")
    c.add_argument("--out", metavar="FILE", help="where to write it (default: profile-WORKLOAD-MODE.toml)")
    c.add_argument("--cgroup", metavar="PATH", action="append",
                   help="the workload's cgroup v2 path (glob, from the cgroup2 mount) for the rules to select, "
                        "an override; repeatable.  Default: from its name (unit:X -> /system.slice/X, image:I -> "
                        "its containers) or, for cgroup:ID, the path its profile carries (needed only when the "
                        "cgroup was gone when the profile was learned)")
    c.set_defaults(fn=cmd_propose)
    _common(c)
