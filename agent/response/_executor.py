"""The executor: one ``wire`` command in, one ``wire.CommandResult`` out.

A plain object; the executor actor feeds it.  Each action is a command type
of ``wire`` (its fields are its parameters, typed and checked at decoding);
what the result's ``data`` holds:

    wire.KillProcess      pid, tree, signal, exe                     -> killed, gone, ms
    wire.BlockConnect     address and/or port, protocol, ttl         -> rule, expires
    wire.BlockExec        path (exact), glob or sha256, ttl          -> rule, expires
    wire.IsolateHost      allow (addresses/CIDRs), ttl               -> rule, allowed, expires
    wire.Unisolate        -
    wire.Unblock          rule
    wire.QuarantineFile   path, and pid, container, mntns: whose     -> sha256, path, original, rule, view, ...
    wire.CollectEvidence  pid, exe                                   -> bundle, manifest, ... (+ archive)
    wire.IsolateContainer container (id or name), ttl                -> container, id, netns, links, expires
    wire.UnisolateContainer container                                -> container, netns

A block's ``ttl`` is also enforced here, ``grace`` seconds after the hive's
own revert was due, so a block never outlives its ttl by long when the hive
is gone.  Blocks and isolation are kept in ``<data>/response/state.json``
and put back when the agent restarts; container isolations (which live in
the containers' namespaces, not the sensor) in ``containers.json``, so
they can still be lifted after a restart.  A command id seen before, also
before a restart (``results.jsonl``), is answered with its first result and
not run again (the hive resends what an agent went offline without
answering)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

import wire
from actors import log_event
from agent import ProcessTable
from kmod import Policy

from ._errors import Gone, Refused, ResponseError
from ._evidence import collect_evidence
from ._files import protected_files, quarantine_file, sha256_file
from ._policy import (
    ISOLATION,
    LOOPBACK,
    Block,
    Isolation,
    SensorSlot,
    literal_glob,
    parse_rules,
    rule_text,
    write_json,
)
from ._process import Strike, strike
from ._results import ResultLog
from ._netns import ContainerIsolations, cut_network, open_net, refuse_shared, restore_network
from ._view import container_of, container_pids, find_view

SENSOR_ACTIONS = frozenset({"block_connect", "block_exec", "isolate_host", "unisolate", "unblock",
                            "quarantine_file"})
"""Actions that change the sensor's policy: run them on the thread that owns
the sensor (the trio thread).  The others block on the system (a kill waits
for deaths, evidence copies files) and belong on a worker thread, as does
``prepare()``, the blocking half of a quarantine (moving and hashing the file)."""
ACTIONS = frozenset(wire.COMMANDS)
_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
_check_result = msgspec.msgpack.Decoder(wire.CommandResult).decode
_encode = msgspec.msgpack.Encoder().encode


def rule_name(command_id: str) -> str:
    return ("resp-" + _NAME.sub("_", command_id))[:60]


class Executor:
    """``slot`` reaches the sensor (None: the agent runs without one and
    refuses blocks); ``hive`` are the hive's addresses, which nothing may
    block and isolation keeps reachable; ``protected_pids`` are more pids no
    kill may touch, beyond init and the agent's own family; ``table`` is the
    relay's process table (what the agent knew of processes, also of those
    that exited), read but never changed here."""

    def __init__(self, data_dir: Path, *, slot: SensorSlot | None = None, hive: Iterable[str] = (),
                 protected_pids: Iterable[int] = (), clock: Callable[[], float] = time.time,
                 grace: float = 30.0, log: logging.Logger | None = None, memory: int = 1024,
                 table: ProcessTable | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.slot = slot
        self.table = table
        self.hive = [str(ipaddress.ip_network(a, strict=False)) for a in hive]
        self._protected = tuple(protected_pids)
        self._clock = clock
        self.grace = grace
        self._log = log or logging.getLogger("immune.agent.response")
        self._memory = memory
        self._results = ResultLog(self.data_dir / "response" / "results.jsonl", keep=memory, log=self._log)
        self._done: OrderedDict[str, wire.CommandResult] = self._results.load()
        self._prepared: dict[str, dict | Strike | Exception] = {}
        """Commands half done by ``prepare`` or ``strike``: what ``execute`` finishes."""
        self._state_file = self.data_dir / "response" / "state.json"
        self._containers = ContainerIsolations(self.data_dir / "response" / "containers.json", self._log)
        self._net_lock = threading.Lock()
        """One container isolation or lift at a time (commands and expiry run on worker threads)."""

    # ---- the one entry point -----------------------------------------------------

    def execute(self, cmd: wire.Command) -> wire.CommandResult:
        seen = self._done.get(cmd.id)
        if seen is not None:
            return wire.CommandResult(command=cmd.id, ok=seen.ok, data=seen.data,
                                      detail=f"already done (command repeated): {seen.detail}")
        if cmd.expires and cmd.expires < self._clock() * 1e9 and cmd.id not in self._prepared:
            return self._finish(cmd, False, "expired before the executor took it; not run")
        if wire.COMMANDS.get(cmd.action) is not type(cmd):
            return self._finish(cmd, False, f"unknown action {cmd.action!r} (known: {', '.join(sorted(ACTIONS))})")
        handler = getattr(self, f"_do_{cmd.action}")
        started = time.monotonic()
        try:
            detail, data = handler(cmd)
        except ResponseError as e:
            level = logging.WARNING if isinstance(e, (Refused, Gone)) else logging.ERROR
            log_event(self._log, "response.failed", level, id=cmd.id, action=cmd.action, reason=str(e))
            return self._finish(cmd, False, str(e))
        except Exception as e:  # noqa: BLE001  one bad command must not take the executor down
            self._log.exception("response.crashed id=%s action=%s", cmd.id, cmd.action)
            return self._finish(cmd, False, f"internal error in {cmd.action}: {type(e).__name__}: {e}")
        log_event(self._log, "response.done", id=cmd.id, action=cmd.action, detail=detail,
                  ms=round((time.monotonic() - started) * 1000, 2))
        return self._finish(cmd, True, detail, data)

    def prepare(self, cmd: wire.Command) -> None:
        """Do the blocking half of a quarantine (any thread); ``execute`` then
        denies the file's exec on the sensor's thread.  Without it, execute
        does both."""
        if not isinstance(cmd, wire.QuarantineFile) or cmd.id in self._done or cmd.id in self._prepared:
            return
        if cmd.expires and cmd.expires < self._clock() * 1e9:
            return  # execute() says so
        try:
            self._slot()  # nothing is moved if its exec could not be denied afterwards
            view = find_view(cmd.pid, container=cmd.container, mntns=cmd.mntns, table=self.table)
            self._prepared[cmd.id] = quarantine_file(cmd.path, self.data_dir / "quarantine", command=cmd.id,
                                                     view=view)
        except ResponseError as e:
            self._prepared[cmd.id] = e

    def strike(self, cmd: wire.Command) -> None:
        """Send a kill's signals now, on the caller's thread (the actor's: no
        hand-off to a worker before the victim stops); ``execute`` then waits
        for the deaths.  Without it, execute does both."""
        if not isinstance(cmd, wire.KillProcess) or cmd.id in self._done or cmd.id in self._prepared:
            return
        if cmd.expires and cmd.expires < self._clock() * 1e9:
            return  # execute() says so
        try:
            self._prepared[cmd.id] = strike(cmd.pid, tree=cmd.tree, sig=cmd.signal, exe=cmd.exe,
                                            extra_protected=self._protected)
        except Exception as e:  # noqa: BLE001  execute() reports it, as if it had run there
            self._prepared[cmd.id] = e

    def _finish(self, cmd: wire.Command, ok: bool, detail: str, data: dict | None = None) -> wire.CommandResult:
        data = dict(data or {})
        archive = data.pop("archive", b"")
        result = _fit(wire.CommandResult(command=cmd.id, ok=ok, detail=detail, data=data, archive=archive))
        self._done[cmd.id] = result
        while len(self._done) > self._memory:
            self._done.popitem(last=False)
        self._results.append(result, self._done)
        return result

    # ---- processes ----------------------------------------------------------------

    def _do_kill_process(self, cmd: wire.KillProcess) -> tuple[str, dict]:
        self.strike(cmd)
        done = self._prepared.pop(cmd.id)
        if isinstance(done, Exception):
            raise done
        assert isinstance(done, Strike)
        out = done.wait(1.0)
        if not out["killed"]:
            return f"pid {cmd.pid} was already gone", out
        return f"killed {len(out['killed'])} process(es): {', '.join(map(str, out['killed']))}", out

    def _do_collect_evidence(self, cmd: wire.CollectEvidence) -> tuple[str, dict]:
        out = collect_evidence(cmd.pid, self.data_dir / "evidence", command=cmd.id, exe=cmd.exe, table=self.table)
        m = out["manifest"]
        where = "attached" if "archive" in out else f"kept on the agent at {out['archive_path']}"
        source = (f"pid {m['pid']} had exited: {len(m['files'])} files from what the agent knew of it"
                  if m["missing"] else f"{len(m['files'])} files from pid {m['pid']}")
        return (f"{source}, {out['archive_size']} bytes packed, {where}"
                + (f"; unreadable: {', '.join(m['errors'])}" if m["errors"] else "")
                + (f"; missing: {', '.join(m['missing'])}" if m["missing"] else "")), out

    # ---- policy -------------------------------------------------------------------

    def _slot(self) -> SensorSlot:
        if self.slot is None:
            raise ResponseError("no kernel sensor is running on this agent; nothing can be blocked")
        return self.slot

    def _expiry(self, ttl: float) -> float:
        """When the agent lifts a block itself: ``grace`` after the hive's
        revert was due (0: never; the ttl's range is checked at decoding)."""
        return self._clock() + ttl + self.grace if ttl else 0.0

    def _change(self, apply: Callable[[], None]) -> None:
        """Change the layer, put it in the sensor, keep it on disk; on any
        failure the layer and the sensor stay as they were."""
        slot = self._slot()
        before = slot.policy.dump()
        apply()
        try:
            slot.apply()
        except ResponseError:
            slot.policy.load(before)
            raise
        self._save()

    def _add_block(self, cmd: wire.BlockConnect | wire.BlockExec, hook: str, match: dict[str, Any]) -> dict:
        block = Block(name=rule_name(cmd.id), hook=hook, match=match, expires=self._expiry(cmd.ttl), command=cmd.id)
        self._change(lambda: self._slot().policy.blocks.__setitem__(block.name, block))
        return {"rule": block.name, "expires": block.expires}

    def _do_block_connect(self, cmd: wire.BlockConnect) -> tuple[str, dict]:
        match = {k: v for k, v in (("address", cmd.address), ("port", cmd.port), ("protocol", cmd.protocol)) if v}
        if cmd.address:
            net = ipaddress.ip_network(cmd.address, strict=False)
            for hive in map(ipaddress.ip_network, self.hive):
                if hive.version == net.version and net.overlaps(hive):
                    raise Refused(f"refused: {net} covers the hive's address {hive}; the agent must keep reaching it")
        out = self._add_block(cmd, "connect", match)
        what = " ".join(f"{k}={v}" for k, v in match.items())
        return f"connect to {what} blocked (rule {out['rule']})", out

    def _do_block_exec(self, cmd: wire.BlockExec) -> tuple[str, dict]:
        globs = [g for g in (literal_glob(cmd.path) if cmd.path else "", cmd.glob) if g]
        match: dict[str, Any] = {"path": globs} if globs else {}
        if cmd.sha256:
            match["sha256"] = cmd.sha256
        protected = protected_files()
        if globs:
            probe = Policy(parse_rules([rule_text("probe", "exec", "block", {"path": globs})]))
            hit = next((f for f in protected if probe.match_exec(f, with_hash=False)), None)
            if hit:
                raise Refused(f"refused: {cmd.path or cmd.glob} matches {hit}, which the agent or the host "
                              "needs to run")
        if cmd.sha256 and any(_safe_sha256(f) == cmd.sha256 for f in protected):
            raise Refused("refused: that digest is of an executable the agent or the host needs to run")
        out = self._add_block(cmd, "exec", match)
        what = " or ".join(repr(w) for w in (cmd.path, cmd.glob) if w) or f"sha256 {cmd.sha256}"
        return f"exec of {what} blocked (rule {out['rule']})", out

    def _do_isolate_host(self, cmd: wire.IsolateHost) -> tuple[str, dict]:
        extra = [str(ipaddress.ip_network(a, strict=False)) for a in cmd.allow]
        allowed = list(dict.fromkeys([*self.hive, *LOOPBACK, *extra]))
        iso = Isolation(allow=allowed, expires=self._expiry(cmd.ttl), command=cmd.id)

        def isolate() -> None:
            self._slot().policy.isolation = iso

        self._change(isolate)
        return (f"isolated: connects and binds refused, open connections reset, except to {', '.join(allowed)}",
                {"rule": ISOLATION, "allowed": allowed, "expires": iso.expires})

    def _do_unisolate(self, cmd: wire.Unisolate | wire.Unblock) -> tuple[str, dict]:
        if self._slot().policy.isolation is None:
            return "was not isolated", {}

        def lift() -> None:
            self._slot().policy.isolation = None

        self._change(lift)
        return "isolation lifted", {}

    def _do_unblock(self, cmd: wire.Unblock) -> tuple[str, dict]:
        name = cmd.rule
        if name == ISOLATION:
            return self._do_unisolate(cmd)
        if name not in self._slot().policy.blocks:
            return f"no rule {name} (already lifted)", {"rule": name}
        self._change(lambda: self._slot().policy.blocks.pop(name))
        return f"rule {name} lifted", {"rule": name}

    def _do_quarantine_file(self, cmd: wire.QuarantineFile) -> tuple[str, dict]:
        self.prepare(cmd)
        sidecar = self._prepared.pop(cmd.id)
        if isinstance(sidecar, ResponseError):
            raise sidecar
        block = Block(name=rule_name(cmd.id), hook="exec", match={"sha256": sidecar["sha256"]}, command=cmd.id)
        try:
            self._change(lambda: self._slot().policy.blocks.__setitem__(block.name, block))
        except ResponseError as e:
            raise ResponseError(f"{cmd.path} moved to {sidecar['path']}, but its exec could not be "
                                f"denied: {e}") from None
        sidecar["rule"] = block.name
        where = f" (in the root of {sidecar['view']['how']})" if "view" in sidecar else ""
        return (f"{sidecar['original']}{where} quarantined as {sidecar['path']}; exec of sha256 "
                f"{sidecar['sha256']} denied"), sidecar

    # ---- containers ---------------------------------------------------------------------

    def _do_isolate_container(self, cmd: wire.IsolateContainer) -> tuple[str, dict]:
        with self._net_lock:
            pid, cid, name = _live_container(cmd.container)
            ns = open_net(pid)
            try:
                netns = os.fstat(ns).st_ino
                refuse_shared(netns, cmd.container)
                expires = self._expiry(cmd.ttl)
                found = self._containers.get(cmd.container)
                if found is not None and found[1]["netns"] == netns:
                    key, record = found
                    record["expires"] = 0.0 if not (expires and record["expires"]) else max(expires, record["expires"])
                    self._containers.put(key, record)
                    return (f"container {cmd.container} was already isolated (by {record['command']})",
                            {"container": cmd.container, "netns": netns, "expires": record["expires"]})
                started = time.monotonic()
                saved = cut_network(ns)
            finally:
                os.close(ns)
            ms = round((time.monotonic() - started) * 1000, 1)
            self._containers.put(cmd.container, {"id": cid, "name": name, "netns": netns, "command": cmd.id,
                                                 "expires": expires, "since": self._clock(), **saved})
        links = ", ".join(saved["links"])
        what = f"links {links} set down" if links else "it had no link but loopback"
        return (f"container {cmd.container} cut off in its network namespace net:[{netns}] ({what}; connections "
                f"{saved['connections']}); the host's network untouched",
                {"container": cmd.container, "id": cid, "netns": netns, "links": saved["links"], "expires": expires,
                 "ms": ms})

    def _do_unisolate_container(self, cmd: wire.UnisolateContainer) -> tuple[str, dict]:
        with self._net_lock:
            return self._lift_container(cmd.container)

    def _lift_container(self, container: str) -> tuple[str, dict]:
        found = self._containers.get(container)
        if found is None:
            return f"container {container} was not isolated", {"container": container}
        key, record = found
        data = {"container": container, "netns": record["netns"]}
        try:
            pid = _live_container(record["id"] or key)[0]
        except Gone:
            self._containers.pop(key)
            return f"container {container} is gone, its network namespace with it: nothing to restore", data
        ns = open_net(pid)
        try:
            if os.fstat(ns).st_ino != record["netns"]:
                self._containers.pop(key)
                return (f"container {container} has another network namespace than the one isolated (it "
                        "restarted): nothing to restore", data)
            failed = restore_network(ns, record)
        finally:
            os.close(ns)
        self._containers.pop(key)
        links = ", ".join(record["links"]) or "none"
        if failed:
            raise ResponseError(f"container {container}: links {links} set up, but not restored: {'; '.join(failed)}")
        return (f"container {container}'s network restored (links {links} up, {len(record['addresses'])} "
                f"address(es) and {len(record['routes'])} route(s) put back where missing)", data)

    def expire_containers(self) -> list[str]:
        """Lift the container isolations that outlived their ttl (and the
        grace); blocking (it enters namespaces): on a worker thread."""
        lifted = []
        for key in self._containers.due(self._clock()):
            with self._net_lock:
                try:
                    detail, _ = self._lift_container(key)
                except ResponseError as e:
                    detail = str(e)
            lifted.append(key)
            log_event(self._log, "response.expired", logging.WARNING, container=key, detail=detail,
                      reason="ttl passed and the hive did not lift it")
        return lifted

    # ---- time, restarts ---------------------------------------------------------------

    def expire(self) -> list[str]:
        """Lift what outlived its ttl (and the grace); returns the rule names."""
        slot = self.slot
        if slot is None:
            return []
        now = self._clock()
        due = [b.name for b in slot.policy.blocks.values() if b.expires and b.expires <= now]
        iso = slot.policy.isolation
        lift_isolation = iso is not None and bool(iso.expires) and iso.expires <= now
        if not due and not lift_isolation:
            return []

        def lift() -> None:
            for name in due:
                slot.policy.blocks.pop(name)
            if lift_isolation:
                slot.policy.isolation = None

        try:
            self._change(lift)
        except ResponseError as e:
            log_event(self._log, "response.expire_failed", logging.ERROR, rules=",".join(due), reason=str(e))
            return []
        names = due + ([ISOLATION] if lift_isolation else [])
        log_event(self._log, "response.expired", logging.WARNING, rules=",".join(names),
                  reason="ttl passed and the hive did not lift it")
        return names

    def restore(self) -> None:
        """Take back the blocks and isolations of before a restart."""
        try:
            self._containers.load()
        except (OSError, ValueError) as e:
            log_event(self._log, "response.state_unreadable", logging.ERROR, path=str(self._containers.path),
                      reason=str(e))
        if self.slot is None or not self._state_file.exists():
            return
        try:
            doc = json.loads(self._state_file.read_text())
            self.slot.policy.load(doc)
        except Exception as e:  # noqa: BLE001  (OSError, bad JSON, a foreign shape, nesting: start without it)
            log_event(self._log, "response.state_unreadable", logging.ERROR, path=str(self._state_file), reason=str(e))
            return
        if self.slot.sensor is not None and self.slot.policy.active:
            self.slot.apply()
        log_event(self._log, "response.restored", blocks=len(self.slot.policy.blocks),
                  isolated=self.slot.policy.isolation is not None)

    def _save(self) -> None:
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(self._state_file, self._slot().policy.dump())
        except OSError as e:
            # In force in the kernel, just not kept across a restart: say so, do not undo it.
            log_event(self._log, "response.state_not_saved", logging.ERROR, reason=e.strerror or str(e))


def _fit(result: wire.CommandResult) -> wire.CommandResult:
    """``result`` within the wire contract, so that the hive takes it: a
    long detail is cut, a name that is not UTF-8 (read from the system as
    surrogates) has them replaced (``wire.fit``), data the contract refuses
    (too large, too deep, not text) is replaced by the reason, and an archive
    too big to send stays on the agent.  The whole stays within
    ``wire.MAX_RESULT_BYTES``, which every hive's ``max_frame`` takes."""
    wire.fit(result)
    if len(result.archive) > wire.MAX_ARCHIVE:
        result.archive = b""
    try:
        frame = _encode(result)
        _check_result(frame)
    except (msgspec.ValidationError, UnicodeEncodeError) as e:
        result.data = {"data_dropped": f"outside the wire contract: {e}"[:wire.MAX_TEXT]}
        return result
    if len(frame) > wire.MAX_RESULT_BYTES and result.archive:
        result.archive = b""
        result.detail = wire.fit_text(result.detail.replace(", attached", "") +
                                      "; the archive stays on the agent (the result would be too large)",
                                      wire.MAX_TEXT)
        frame = _encode(result)
    if len(frame) > wire.MAX_RESULT_BYTES:
        result.data = {"data_dropped": f"{len(frame)} bytes encoded, over the {wire.MAX_RESULT_BYTES} a result may take"}
    return result


def _live_container(container: str) -> tuple[int, str, str]:
    """(a live pid, id, name) of the container whose id or name is ``container``."""
    for pid in container_pids(container):
        cid, name = container_of(pid)
        if cid:
            return pid, cid, name
    raise Gone(f"no container {container} runs on this host (no process of it found)")


def _safe_sha256(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return ""
