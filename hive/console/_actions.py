"""What a responder does to an action, shared by the pages and the API:
approve or deny one awaiting approval, or run one by hand (kill a process,
block an address, isolate a host, collect evidence).  Written to the
response records under the logged-in user's name (the audit trail says
who), then carried out by the playbook actor."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from hive.playbook import MANUAL, Records

from . import _read as read

MAX_WHY = 500
"""The longest reason kept with a decision."""

_Name = Annotated[str, msgspec.Meta(max_length=64)]


class ManualAction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An operator's own action: ``action`` on ``agent``; ``pid`` (with
    ``tree`` for a kill) for kill_process and collect_evidence, ``address``
    for block_connect, ``ttl`` (seconds, 0: until lifted) for block_connect
    and isolate_host; ``why`` goes into the audit trail; ``alert`` names the
    alert it answers."""

    action: Annotated[str, msgspec.Meta(max_length=40, description=" | ".join(MANUAL))]
    agent: _Name
    pid: int | None = None
    tree: bool | None = None
    address: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    ttl: float = 0.0
    why: Annotated[str, msgspec.Meta(max_length=MAX_WHY)] = ""
    alert: _Name = ""

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("pid", "tree", "address") if getattr(self, k) is not None}


def manual_from_form(form: dict[str, str]) -> ManualAction:
    """The action form's fields (text; empty means not given) as a
    :class:`ManualAction`; ValueError (one line) if a number is not one."""
    doc: dict[str, Any] = {k: form.get(k, "") for k in ("action", "agent", "why", "alert")}
    if len(doc["why"]) > MAX_WHY:
        raise ValueError(f"why: at most {MAX_WHY} characters")
    for name, kind in (("pid", int), ("ttl", float)):
        text = form.get(name, "").strip()
        if text:
            try:
                doc[name] = kind(text) if len(text) < 32 else kind("x")
            except ValueError:
                raise ValueError(f"{name}: {text[:40]!r} is not a number") from None
    if form.get("address", "").strip():
        doc["address"] = form["address"].strip()
    if form.get("tree"):
        doc["tree"] = True
    try:
        return msgspec.convert(doc, ManualAction)
    except msgspec.ValidationError as e:
        raise ValueError(str(e)) from None


async def decide(request: Any, action_id: str, verb: str, why: str = "") -> read.ActionView:
    """``verb`` is approve or deny; raises :class:`hive.playbook.RecordsError`
    if there is no such action or it is not awaiting approval."""
    user = request.state.user.name
    why = " ".join(why.split())[:MAX_WHY]

    def write(store: Any) -> read.ActionView:
        records = Records(store.db)
        done = records.approve(action_id, user) if verb == "approve" else records.deny(action_id, user, why)
        return read._view(done)

    return await request.app.state.console.write(write)


async def run(request: Any, m: ManualAction) -> read.ActionView:
    """Record ``m`` for the playbook actor to send; ValueError (one line) if
    it must not be sent (``hive.playbook.check_manual``), before anything is
    written; :class:`hive.playbook.RecordsError` if the store cannot take it."""
    console = request.app.state.console
    user = request.state.user.name
    why = " ".join(m.why.split())

    def write(store: Any) -> read.ActionView:
        return read._view(Records(store.db).run(m.action, m.agent, m.params(), ttl=m.ttl, by=user, why=why,
                                                alert=m.alert, protected=console.protected))

    return await console.write(write)
