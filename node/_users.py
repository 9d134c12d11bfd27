"""``immune-node users``: the console's users and their API tokens, in the
hive's store.  Every change goes into the audit trail with who made it."""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from ._config import Config
from ._fleet import FleetCliError, _actor


def _password(prompt: str) -> str:
    """The new password: asked twice on a terminal, else one line of stdin."""
    from hive.console._secrets import PasswordError, check_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"{prompt}: ")
        if getpass.getpass("again: ") != password:
            raise FleetCliError("the two passwords differ")
    else:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    try:
        check_password(password)
    except PasswordError as e:
        raise FleetCliError(str(e)) from None
    return password


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def cmd_users(args: argparse.Namespace, cfg: Config) -> int:
    from hive import Store, StoreError
    from hive.console._users import Users, check_name, check_role

    from .cli import _table

    try:
        # Made if missing: the first admin is added before the hive first starts.
        store = Store(cfg.store_location)
    except StoreError as e:
        raise FleetCliError(str(e)) from None
    users = Users(store)
    actor = _actor()
    try:
        if args.action == "list":
            rows = users.list()
            _table([("NAME", "ROLE", "CREATED", "PASSWORD SET", "TOKENS", "SESSIONS")] + [
                (u.name, u.role, _when(u.created), _when(u.changed), str(u.tokens), str(u.sessions))
                for u in rows])
            tokens = users.tokens()
            if tokens:
                print()
                _table([("TOKEN", "USER", "CREATED", "REVOKED")] + [
                    (t.id, t.user, _when(t.created), _when(t.revoked)) for t in tokens])
        elif args.action == "add":
            check_name(args.name)
            check_role(args.role)
            users.add(args.name, args.role, _password(f"password for {args.name}"), actor=actor)
            print(f"added {args.name} ({args.role})")
        elif args.action == "passwd":
            ended = users.set_password(args.name, _password(f"new password for {args.name}"), actor=actor)
            print(f"password of {args.name} changed; {ended} session(s) ended")
        elif args.action == "remove":
            users.remove(args.name, actor=actor)
            print(f"removed {args.name}: their sessions ended and their API tokens are revoked")
        elif args.action == "token":
            token_id, token = users.new_token(args.name, actor=actor)
            print(token)
            print(f"API token {token_id} for {args.name}: shown once, kept only as a hash; "
                  f"`immune-node users revoke-token {token_id}` revokes it", file=sys.stderr)
        elif args.action == "revoke-token":
            token_id = args.id.removeprefix("imt_").partition("_")[0]  # the id, or the whole token
            user = users.revoke_token(token_id, actor=actor)
            print(f"revoked API token {token_id} of {user}")
    except StoreError as e:
        raise FleetCliError(str(e)) from None
    finally:
        store.close()
    return 0


def add_parsers(add) -> None:
    from hive.console._auth import ALL_ROLES

    p = add("users", cmd_users, "manage the console's users and API tokens",
            "Users of the console (the hive's HTTPS dashboard and API). Roles: viewer (reads), responder "
            "(also approves, denies and runs actions), admin (also manages users, rules, playbooks and "
            "policies), peer (another hive: reads this hive's indicators at /taxii2/ and nothing else). A password is read from stdin (one line; asked twice on a terminal), at least 12 "
            "characters, and stored as a scrypt hash. Each change is in the audit trail with who made it.",
            common=False)
    from .cli import _common

    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("add", help="add a user (password from stdin)",
                           description="Add user NAME with ROLE; the password is read from stdin.")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--role", required=True, choices=ALL_ROLES)
    ls = actions.add_parser("list", help="the users, their tokens and live sessions")
    pw = actions.add_parser("passwd", help="set a user's password (from stdin); ends their sessions",
                            description="Set NAME's password (read from stdin); their sessions end.")
    pw.add_argument("name", metavar="NAME")
    rm = actions.add_parser("remove", help="remove a user: their sessions end, their tokens are revoked")
    rm.add_argument("name", metavar="NAME")
    tk = actions.add_parser("token", help="print a new API token for a user (shown once)",
                            description="Print a new API token for NAME on stdout; it is shown once and "
                            "stored only as a hash. Send it as 'Authorization: Bearer TOKEN'.")
    tk.add_argument("name", metavar="NAME")
    rv = actions.add_parser("revoke-token", help="revoke an API token by its id",
                            description="Revoke the API token ID (the part after imt_, as `users list` shows).")
    rv.add_argument("id", metavar="ID")
    for sp in (a, ls, pw, rm, tk, rv):
        _common(sp)
