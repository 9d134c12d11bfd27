"""Herd: threat intelligence shared between hives (issue 16).

Out: what this hive learned (quarantined and blocked files' SHA-256, blocked
addresses, command lines of incidents) as signed STIX 2.1 indicators and
sightings, served over TAXII 2.1 by the console (``hive.console._taxii``).
In: peers' indicators, pulled, checked (signature, schema, expiry), kept
once per pattern with every peer that sent it, matched against events
(alerts) and, for ``enforce`` peers, pushed to agents as blocks."""

from ._actor import herd_actor
from ._intel import Entry, Intel, PullReport, Source, herd_tables, matchable
from ._match import Matcher
from ._pull import Fetched, fetch, keep, pull
from ._stix import (
    Fact, HerdError, Pulled, Refused, build, check, check_all, objects_of, parse_document, parse_key, parse_pattern,
    parse_stamp, pattern, sign, stamp, verify,
)

__all__ = ["Entry", "Fact", "Fetched", "HerdError", "Intel", "Matcher", "PullReport", "Pulled", "Refused", "Source",
           "build", "check", "check_all", "fetch", "herd_actor", "herd_tables", "keep", "matchable", "objects_of",
           "parse_document", "parse_key", "parse_pattern", "parse_stamp", "pattern", "pull", "sign", "stamp",
           "verify"]
