"""Indicators as STIX 2.1 objects: made from what the hive learned, signed
with the hive's Ed25519 key, and checked when they come from a peer.

Plain functions, no store and no sockets.  A hive serves an ``indicator``
for each thing it learned (a file's SHA-256, an address, a command line)
and a ``sighting`` of it (how often, first and last seen).  Both carry
``x_immune_signature``: the hive's Ed25519 signature over the object's
canonical JSON without that property, so a peer that pinned the hive's key
can tell an altered or forged object from a real one, whichever server,
file or feed it came through.

Only patterns of one comparison on one observable are acted on (a file's
SHA-256, an IPv4/IPv6 address or network): those are what an agent can
block.  Anything else a peer sends is refused with the reason, never
guessed at.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE = "x_immune_signature"
SOURCE = "x_immune_source"
"""Where the hive learned it: the action, alert and incident ids, and what happened."""
DOMAIN = b"immune-herd-v1\0"
"""Signed with each object, so no other signature of the key verifies as one."""
_NAMESPACE = uuid.UUID("5b0f0c6e-63a1-4c8e-9a56-4e9d7d4b7a11")

KINDS = ("sha256", "ipv4", "ipv6", "cmdline", "sigma")
"""What an indicator is about; the first three can be matched and blocked."""
MATCHABLE = ("sha256", "ipv4", "ipv6")

MAX_OBJECTS = 10000
"""Objects taken from one bundle, page or feed; the rest are refused together."""
MAX_PATTERN = 2048


class HerdError(Exception):
    """An input cannot be used; one line saying why."""


# -- time ------------------------------------------------------------------------------

def stamp(t: float) -> str:
    """STIX/TAXII timestamp (UTC, microseconds) of Unix time ``t``."""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_STAMP = re.compile(r"\A(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?Z\Z")


def parse_stamp(text: Any) -> float:
    """Unix time of an RFC 3339 UTC timestamp as STIX writes them
    (``2026-12-05T02:45:07.123Z``); HerdError for anything else."""
    m = _STAMP.match(text) if isinstance(text, str) else None
    if m is None:
        raise HerdError(f"{str(text)[:64]!r} is not a UTC timestamp (YYYY-MM-DDTHH:MM:SS[.s]Z)")
    try:
        t = dt.datetime(*(int(g) for g in m.groups()[:6]), tzinfo=dt.timezone.utc)
    except ValueError as e:
        raise HerdError(f"{text[:64]!r}: {e}") from None
    return t.timestamp() + float(m.group(7) or 0)


# -- patterns -------------------------------------------------------------------------

def pattern(kind: str, value: str) -> str:
    if kind == "sha256":
        return f"[file:hashes.'SHA-256' = '{value}']"
    if kind in ("ipv4", "ipv6"):
        return f"[{kind}-addr:value = '{value}']"
    if kind == "cmdline":
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"[process:command_line = '{escaped}']"
    raise ValueError(f"unknown kind {kind!r}")


_PATTERN = re.compile(
    r"\A\[\s*(?P<path>file:hashes\.(?:'SHA-256'|SHA256|'SHA256')|ipv4-addr:value|ipv6-addr:value)"
    r"\s*=\s*'(?P<value>[^'\\]{1,128})'\s*\]\Z")


def parse_pattern(text: str) -> tuple[str, str]:
    """(kind, value) of a pattern the hive can act on: one comparison of a
    file's SHA-256 or an address (or network); HerdError otherwise."""
    m = _PATTERN.match(text) if isinstance(text, str) and len(text) <= MAX_PATTERN else None
    if m is None:
        raise HerdError("the pattern is not one the hive acts on ([file:hashes.'SHA-256' = '...'], "
                        "[ipv4-addr:value = '...'], [ipv6-addr:value = '...'])")
    path, value = m["path"], m["value"]
    if path.startswith("file:"):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise HerdError(f"{value[:80]!r} is not a SHA-256 (64 hex digits)")
        return "sha256", value.lower()
    kind = path[:4]
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise HerdError(f"{value[:80]!r} is not an {kind} address or network") from None
    if f"ipv{net.version}" != kind:
        raise HerdError(f"{value[:80]!r} is not an {kind} address")
    if net.prefixlen < (8 if net.version == 4 else 32):
        raise HerdError(f"{value[:80]!r} is too wide a network to act on")
    return kind, str(net) if net.num_addresses > 1 else str(net.network_address)


def address_kind(address: str) -> str | None:
    try:
        return f"ipv{ipaddress.ip_address(address).version}"
    except ValueError:
        return None


# -- signing ---------------------------------------------------------------------------

def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes signed: the object without its signature, keys sorted, no spaces."""
    body = {k: v for k, v in obj.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(obj: dict[str, Any], key: Any) -> dict[str, Any]:
    """``obj`` with its signature by ``key`` (a ``fleet.SigningKey``)."""
    return {**obj, SIGNATURE: base64.b64encode(key.sign_data(DOMAIN + canonical(obj))).decode()}


def verify(obj: Mapping[str, Any], public: bytes) -> None:
    """HerdError unless ``obj`` carries a valid signature of ``public``."""
    sig = obj.get(SIGNATURE)
    if sig is None:
        raise HerdError("unsigned, and this peer's key is pinned")
    try:
        raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        Ed25519PublicKey.from_public_bytes(public).verify(raw, DOMAIN + canonical(obj))
    except (InvalidSignature, ValueError, TypeError):
        raise HerdError("bad signature: altered, or not signed by the peer's pinned key") from None


def parse_key(text: str) -> bytes:
    """A peer's pinned Ed25519 public key: 64 hex digits (what ``immune-node
    intel key`` prints)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise ValueError("a herd key is 64 hex digits (immune-node intel key prints the hive's)")
    return bytes.fromhex(text.strip())


# -- out: what this hive learned ----------------------------------------------------------

@dataclass
class Fact:
    """One thing the hive learned, folded over every time it learned it."""

    kind: str
    value: str
    first: float
    last: float
    count: int = 1
    confidence: int = 50
    what: str = ""
    """In words: "quarantined", "blocked exec", ..."""
    actions: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)
    text: str = ""
    """sigma: the rule's YAML (``value`` is its id)."""
    title: str = ""

    def fold(self, other: Fact) -> None:
        self.text, self.title = other.text or self.text, other.title or self.title
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.count += other.count
        self.confidence = max(self.confidence, other.confidence)
        if other.what and other.what not in self.what.split(", "):
            self.what = f"{self.what}, {other.what}" if self.what else other.what
        for mine, theirs in ((self.actions, other.actions), (self.alerts, other.alerts),
                             (self.incidents, other.incidents)):
            mine.extend(x for x in theirs if x and x not in mine)
            del mine[:-16]  # the latest few: a fact seen a thousand times stays small


CONFIDENCE = {"quarantine_file": 90, "block_exec": 85, "block_connect": 75, "isolation": 70, "cmdline": 40,
              "sigma": 60}
"""How sure the hive is, by how it learned it: a quarantine follows a detection
and a copy of the file; a block may be an operator's precaution."""
DONE_STATES = ("done", "active", "reverted")


def fact_of_command(action: str, state: str, params: Mapping[str, Any], data: Mapping[str, Any], *,
                    created: float, updated: float, action_id: str, alert: str, reason: str) -> Fact | None:
    """The fact a finished response action teaches, or None."""
    if state not in DONE_STATES:
        return None
    kind = value = ""
    if action == "quarantine_file":
        value = str(data.get("sha256") or "")
        kind = "sha256"
    elif action == "block_exec":
        value = str(params.get("sha256") or "")
        kind = "sha256"
    elif action == "block_connect":
        value = str(params.get("address") or "")
        kind = address_kind(value) or ""
        if not kind:  # a network
            try:
                kind = f"ipv{ipaddress.ip_network(value, strict=False).version}"
            except ValueError:
                return None
    if not kind or not value:
        return None
    if kind == "sha256" and not re.fullmatch(r"[0-9a-f]{64}", value):
        return None
    what = {"quarantine_file": "quarantined", "block_exec": "blocked exec",
            "block_connect": "blocked connect"}[action]
    return Fact(kind, value, created, updated, confidence=CONFIDENCE[action], what=what, actions=[action_id],
                alerts=[alert] if alert else [])


def fact_of_isolation(address: str, *, time: float, action_id: str, alert: str) -> Fact | None:
    """An address a host connected to in the alert that got it isolated:
    shared only if it is a public one (a peer must never be told to cut
    its own networks off)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if not ip.is_global:
        return None
    return Fact(f"ipv{ip.version}", str(ip), time, time, confidence=CONFIDENCE["isolation"],
                what="contacted by an isolated host", actions=[action_id], alerts=[alert] if alert else [])


def fact_of_cmdline(cmdline: str, *, time: float, alert: str, incident: str) -> Fact | None:
    cmdline = cmdline.strip()
    if not cmdline or len(cmdline) > 1024:
        return None
    return Fact("cmdline", cmdline, time, time, confidence=CONFIDENCE["cmdline"], what="in an incident",
                alerts=[alert] if alert else [], incidents=[incident] if incident else [])


def fact_of_rule(rule_id: str, text: str, title: str, *, time: float, alert: str, incident: str) -> Fact | None:
    """A Sigma rule that fired in an incident, shared as the rule itself."""
    if not rule_id or not text or len(text) > MAX_RULE:
        return None
    return Fact("sigma", rule_id, time, time, confidence=CONFIDENCE["sigma"], what="rule fired in an incident",
                alerts=[alert] if alert else [], incidents=[incident] if incident else [], text=text, title=title)


MAX_RULE = 64 << 10


class RuleTexts:
    """Sigma rule id -> the rule file's text, from the hive's rule folders,
    read once when first asked (a file's ``id:`` line, no YAML parsing)."""

    _ID = re.compile(r"^id:\s*['\"]?([0-9A-Za-z._-]{1,128})['\"]?\s*$", re.M)

    def __init__(self, folders: Iterable[Any] = ()) -> None:
        self.folders = list(folders)
        self._texts: dict[str, str] | None = None

    def get(self, rule_id: str) -> str | None:
        if self._texts is None:
            self._texts = {}
            from pathlib import Path

            for folder in self.folders:
                root = Path(folder)
                if not root.is_dir():
                    continue
                for path in sorted(root.resolve().rglob("*.yml")):
                    try:
                        if path.stat().st_size > MAX_RULE:
                            continue
                        text = path.read_text()
                    except (OSError, UnicodeDecodeError):
                        continue
                    m = self._ID.search(text)
                    if m:
                        self._texts.setdefault(m.group(1), text)
        return self._texts.get(rule_id)


def object_ids(hive_public: bytes, kind: str, value: str) -> tuple[str, str]:
    """(indicator id, sighting id): the same for the same fact on the same
    hive, so a fact learned again updates its objects instead of adding."""
    name = f"{hive_public.hex()}:{kind}:{value}"
    return (f"indicator--{uuid.uuid5(_NAMESPACE, name)}",
            f"sighting--{uuid.uuid5(_NAMESPACE, 'sighting:' + name)}")


def identity_id(hive_public: bytes) -> str:
    return f"identity--{uuid.uuid5(_NAMESPACE, 'hive:' + hive_public.hex())}"


def build(fact: Fact, key: Any, *, now: float, share_for: float, hive_name: str = "") -> tuple[dict, dict]:
    """The signed (indicator, sighting) of ``fact``, valid ``share_for``
    seconds after it was last seen, checked by ``stix2`` before signing."""
    import stix2

    ind_id, sight_id = object_ids(key.public, fact.kind, fact.value)
    creator = identity_id(key.public)
    source = {"what": fact.what, "actions": fact.actions, "alerts": fact.alerts, "incidents": fact.incidents,
              "hive": hive_name}
    refs = [{"source_name": "immune-hive", "external_id": ref, "description": desc}
            for refs, desc in ((fact.incidents, "incident"), (fact.alerts, "alert"), (fact.actions, "action"))
            for ref in refs[-4:]]
    if fact.kind == "sigma":  # the rule itself, in its own pattern language
        shape = dict(pattern=fact.text, pattern_type="sigma", name=f"sigma rule: {fact.title or fact.value}"[:256])
    else:
        shape = dict(pattern=pattern(fact.kind, fact.value), pattern_type="stix",
                     name=f"{fact.what}: {fact.value}"[:256])
    indicator = stix2.v21.Indicator(
        id=ind_id, created=stamp(fact.first), modified=stamp(max(now, fact.last)), created_by_ref=creator,
        indicator_types=["malicious-activity"], **shape, valid_from=stamp(fact.first),
        valid_until=stamp(fact.last + share_for), confidence=fact.confidence,
        external_references=refs or None, allow_custom=True, **{SOURCE: source})
    sighting = stix2.v21.Sighting(
        id=sight_id, created=stamp(fact.first), modified=stamp(max(now, fact.last)), created_by_ref=creator,
        sighting_of_ref=ind_id, first_seen=stamp(fact.first), last_seen=stamp(max(fact.last, fact.first + 1e-6)),
        count=min(fact.count, 999_999_999), confidence=fact.confidence, allow_custom=True, **{SOURCE: source})
    return (sign(json.loads(indicator.serialize()), key), sign(json.loads(sighting.serialize()), key))


def identity(key: Any, name: str, now: float) -> dict:
    import stix2

    ident = stix2.v21.Identity(id=identity_id(key.public), created=stamp(0), modified=stamp(0),
                               name=name[:256] or "immune hive", identity_class="system")
    return sign(json.loads(ident.serialize()), key)


# -- in: what a peer sends -------------------------------------------------------------------

@dataclass(frozen=True)
class Pulled:
    """An indicator from a peer that passed every check."""

    indicator: str
    kind: str
    value: str
    valid_until: float
    confidence: int
    revoked: bool
    capped: bool = False
    """Its own expiry was further than the hive allows: cut to the cap."""


@dataclass(frozen=True)
class Refused:
    indicator: str
    reason: str


def objects_of(doc: Any) -> list[Any]:
    """The objects of a STIX bundle, a TAXII envelope, a list of objects, or a
    MISP feed (an event's ``sha256``/``ip-dst``/``ip-src`` attributes,
    made into indicators); HerdError if it is none of them."""
    if isinstance(doc, list):
        objs = doc
    elif isinstance(doc, dict) and doc.get("type") == "bundle" or isinstance(doc, dict) and "objects" in doc:
        objs = doc.get("objects") or []
    elif isinstance(doc, dict) and ("Event" in doc or "response" in doc):
        objs = _misp(doc)
    else:
        raise HerdError("not a STIX bundle, a TAXII envelope or a MISP feed")
    if not isinstance(objs, list):
        raise HerdError("'objects' is not a list")
    if len(objs) > MAX_OBJECTS:
        raise HerdError(f"{len(objs)} objects, above {MAX_OBJECTS}")
    return objs


_MISP_KINDS = {"sha256": "sha256", "ip-dst": "ip", "ip-src": "ip"}


def _misp(doc: dict) -> list[dict]:
    events = doc.get("response") if "response" in doc else [doc]
    if not isinstance(events, list):
        raise HerdError("a MISP 'response' is not a list")
    out: list[dict] = []
    for wrapper in events:
        event = wrapper.get("Event") if isinstance(wrapper, dict) else None
        if not isinstance(event, dict):
            raise HerdError("a MISP feed entry has no Event")
        attrs = event.get("Attribute") or []
        if not isinstance(attrs, list):
            raise HerdError("a MISP Event's Attribute is not a list")
        for a in attrs[:MAX_OBJECTS + 1]:
            if not isinstance(a, dict) or a.get("type") not in _MISP_KINDS or not isinstance(a.get("value"), str):
                continue
            value = a["value"]
            kind = "sha256" if a["type"] == "sha256" else (address_kind(value.split("/")[0]) or "ipv4")
            try:
                uid = str(uuid.UUID(str(a.get("uuid"))))
            except ValueError:
                uid = str(uuid.uuid5(_NAMESPACE, f"misp:{kind}:{value}"))
            stamp_of = a.get("timestamp")
            try:
                first = float(stamp_of) if stamp_of is not None else 0.0
                first = first if 0 < first < 4e9 else 0.0
            except (TypeError, ValueError):
                first = 0.0
            try:
                pat = pattern(kind, value.replace("'", ""))
            except ValueError:
                continue
            out.append({"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uid}",
                        "created": stamp(first), "modified": stamp(first), "pattern": pat, "pattern_type": "stix",
                        "valid_from": stamp(first), "revoked": bool(a.get("deleted"))})
    return out


_ACTED_ON = re.compile(r"file:hashes|ipv[46]-addr:")


def check(obj: Any, *, key: bytes | None, now: float, max_age: float) -> Pulled | Refused | None:
    """One object from a peer: a :class:`Pulled` indicator, why it is
    :class:`Refused`, or None (not an indicator: sightings, identities)."""
    if not isinstance(obj, dict):
        return Refused("", "not a JSON object")
    ident = obj.get("id") if isinstance(obj.get("id"), str) else ""
    ident = ident[:128]
    if obj.get("type") != "indicator":
        if key is not None and obj.get("type") in ("sighting", "identity"):
            try:
                verify(obj, key)
            except HerdError as e:
                return Refused(ident, str(e))
        return None
    try:
        if key is not None:
            verify(obj, key)
        import stix2
        import stix2.exceptions

        try:
            parsed = stix2.parse(obj, allow_custom=True, version="2.1")
        except (stix2.exceptions.STIXError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise HerdError(f"not a valid STIX 2.1 indicator: {str(e).splitlines()[0][:200]}") from None
        # Rules and patterns on what an agent cannot block (a command line,
        # a process name) are intelligence to read, not to act on: ignored.
        if parsed.get("pattern_type") != "stix" or not _ACTED_ON.search(parsed["pattern"]):
            return None
        kind, value = parse_pattern(parsed["pattern"])
        revoked = bool(parsed.get("revoked", False))
        until = parse_stamp(obj["valid_until"]) if "valid_until" in obj else now + max_age
        if until <= now and not revoked:
            raise HerdError(f"expired at {obj.get('valid_until')}")
        capped = until > now + max_age
        confidence = parsed.get("confidence")
        return Pulled(ident, kind, value, min(until, now + max_age),
                      int(confidence) if isinstance(confidence, int) else 50, revoked, capped)
    except HerdError as e:
        return Refused(ident, str(e))


def check_all(objs: Iterable[Any], *, key: bytes | None, now: float, max_age: float,
              ) -> tuple[list[Pulled], list[Refused], int]:
    """(accepted, refused, ignored) of a page or bundle's objects."""
    good, bad, ignored = [], [], 0
    for obj in objs:
        r = check(obj, key=key, now=now, max_age=max_age)
        if r is None:
            ignored += 1
        elif isinstance(r, Refused):
            bad.append(r)
        else:
            good.append(r)
    return good, bad, ignored


def parse_document(data: bytes, *, limit: int = 32 << 20) -> list[Any]:
    """The objects of a pulled file or page (bytes), bounded; HerdError if unreadable."""
    if len(data) > limit:
        raise HerdError(f"{len(data)} bytes, above {limit}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise HerdError(f"not JSON: {str(e)[:200]}") from None
    return objects_of(doc)
