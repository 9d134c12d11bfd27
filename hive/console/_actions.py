"""An operator's decision on a pending action, shared by the pages and the
API: written to the response records under the logged-in user's name (the
audit trail says who), then carried out by the playbook actor."""

from __future__ import annotations

from typing import Any

from hive.playbook import Records

from . import _read as read

MAX_WHY = 500
"""The longest reason kept with a decision."""


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
