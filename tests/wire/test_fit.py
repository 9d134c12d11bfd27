"""wire.fit: whatever texts an agent built a message from, once fitted the
hive's decoder takes it, and what was already within bounds is untouched."""

import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from actors import Codec

HIVE = Codec(wire.AgentMessage)  # the router's decoder

# Any code point, lone surrogates included (what os.fsdecode gives for bytes
# that are not UTF-8, and what no UTF-8 encoder takes).
char = st.characters(codec=None, exclude_categories=())
short = st.text(char, max_size=40)
# Texts around and far beyond every bound, without generating them char by char.
long = st.builds(lambda part, n: part * n, st.text(char, min_size=1, max_size=4), st.integers(0, 9000))
# Names read from the system: bytes that are not UTF-8 become surrogates.
from_system = st.builds(os.fsdecode, st.binary(max_size=30))
text = st.one_of(short, from_system, long)


def texts_of(cls) -> dict:
    """A strategy for each text and list-of-texts field of ``cls``."""
    fields = {}
    for f in msgspec.inspect.type_info(cls).fields:
        if isinstance(f.type, msgspec.inspect.StrType):
            fields[f.name] = text
        elif isinstance(f.type, msgspec.inspect.ListType) and isinstance(f.type.item_type, msgspec.inspect.StrType):
            many = st.builds(lambda items, n: items * n, st.lists(text, min_size=1, max_size=3), st.integers(0, 2000))
            fields[f.name] = st.one_of(st.lists(text, max_size=5), many)
    return fields


event = st.one_of([st.builds(cls, **texts_of(cls)) for cls in wire.AnyEvent.__args__])
hello = st.builds(wire.Hello, **texts_of(wire.Hello))
result = st.builds(wire.CommandResult, **texts_of(wire.CommandResult))


def has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def kept_or_cut(before: str, after: str, bound: int) -> None:
    """``after`` is ``before`` if that was valid and within ``bound``, its
    beginning ending in '…' if longer; anyway valid and within ``bound``."""
    assert len(after) <= bound and not has_surrogate(after)
    if not has_surrogate(before):
        assert after == (before if len(before) <= bound else before[:bound - 1] + wire.CUT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(event, min_size=1, max_size=3))
def test_any_event_once_fitted_is_one_the_hive_decodes(events):
    before = [msgspec.structs.replace(e) for e in events]
    wire.fit_all(events)
    batch = wire.EventBatch(seq=1, stream="s", events=events)
    assert HIVE.decode(HIVE.encode(batch)) == batch
    for old, new in zip(before, events):
        for f in msgspec.inspect.type_info(type(new)).fields:
            if isinstance(f.type, msgspec.inspect.StrType):
                kept_or_cut(getattr(old, f.name), getattr(new, f.name), f.type.max_length)
        if isinstance(new, wire.Exec) and not any(map(has_surrogate, old.argv)):
            assert new.argv_truncated == (len(old.argv) > wire.MAX_ARGV or any(
                len(a) > wire.MAX_ARG for a in old.argv[:wire.MAX_ARGV]))
            assert new.argv == [a if len(a) <= wire.MAX_ARG else a[:wire.MAX_ARG - 1] + wire.CUT
                                for a in old.argv[:wire.MAX_ARGV]]


BASE_TEXTS = {f.name: f.type.max_length for f in msgspec.inspect.type_info(wire.Event).fields
              if isinstance(f.type, msgspec.inspect.StrType)}
"""The texts every event has, and their bounds."""


@st.composite
def burst(draw):
    """Events of any kinds whose texts of the Event base in ``only`` are
    anything, mostly within bounds (a relay's burst), the rest as decoded."""
    only = frozenset(draw(st.sets(st.sampled_from(sorted(BASE_TEXTS)), min_size=1)))
    fine = st.text(st.characters(codec="utf-8"), max_size=20)
    field = st.one_of(fine, fine, fine, text)
    kinds = st.sampled_from(wire.AnyEvent.__args__)
    events = draw(st.lists(st.builds(lambda cls, texts: cls(**texts), kinds,
                                     st.fixed_dictionaries({name: field for name in only})), min_size=2, max_size=20))
    return only, events


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(burst())
def test_a_burst_fitted_on_the_fields_it_names_is_one_the_hive_decodes(drawn):
    only, events = drawn
    before = [msgspec.structs.replace(e) for e in events]
    wire.fit_all(events, only)
    batch = wire.EventBatch(seq=1, stream="s", events=events)
    assert HIVE.decode(HIVE.encode(batch)) == batch
    for old, new in zip(before, events):
        for name, bound in BASE_TEXTS.items():
            kept_or_cut(getattr(old, name), getattr(new, name), bound)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(hello, result))
def test_any_hello_or_result_once_fitted_is_one_the_hive_decodes(msg):
    wire.fit(msg)
    assert HIVE.decode(HIVE.encode(msg)) == msg


def test_undecodable_bytes_read_as_the_kernel_sensor_shows_them():
    raw = b"/srv/caf\xe9/\xff\xfe-run"
    from_proc = os.fsdecode(raw)  # what os.readlink gives
    ev = wire.Open(image=from_proc, path=raw.decode(errors="replace"))  # path: as kmod's decoder has it
    with pytest.raises(UnicodeEncodeError):
        HIVE.encode(ev)
    wire.fit(ev)
    assert ev.image == ev.path == "/srv/caf\ufffd/\ufffd\ufffd-run"
    # A surrogate that stands for no byte (from JSON's \ud800, say) is replaced too.
    assert "\ud800" not in wire.fit_text("a\ud800b\udcffc", 100)


def test_texts_are_cut_at_their_bound_and_show_it():
    ev = wire.Exec(cmdline="x" * 100_000, user="u" * 300, exe="/" + "d" * 5000, comm="ok")
    wire.fit(ev)
    assert ev.cmdline == "x" * (wire.MAX_CMDLINE - 1) + "\u2026"
    assert len(ev.user) == wire.MAX_NAME and ev.user.endswith("\u2026")
    assert len(ev.exe) == wire.MAX_PATH
    assert ev.comm == "ok"
    # Cut on a character, whatever its width in UTF-8.
    assert wire.fit_text("\U0001f600" * 300, wire.MAX_NAME) == "\U0001f600" * 255 + "\u2026"


def test_a_cut_argv_says_so():
    ev = wire.Exec(argv=["a"] * (wire.MAX_ARGV + 5))
    wire.fit(ev)
    assert len(ev.argv) == wire.MAX_ARGV and ev.argv_truncated
    ev = wire.Exec(argv=["sh", "-c", "y" * 5000])
    wire.fit(ev)
    assert ev.argv[:2] == ["sh", "-c"] and len(ev.argv[2]) == wire.MAX_ARG and ev.argv_truncated
    ev = wire.Exec(argv=["caf\udce9"])  # replaced, not cut
    wire.fit(ev)
    assert ev.argv == ["caf\ufffd"] and not ev.argv_truncated


def test_a_hello_keeps_the_first_addresses():
    h = wire.fit(wire.Hello(agent="a", addresses=[f"10.0.{i // 256}.{i % 256}" for i in range(3000)]))
    assert len(h.addresses) == wire.MAX_ADDRESSES and h.addresses[-1] == "10.0.3.255"


def test_a_message_within_bounds_is_left_as_it_is():
    ev = wire.Exec(argv=["ls", "-l"], cmdline="ls -l", image="/usr/bin/ls", user="\u00e9lodie", comm="ls",
                   sha256="a" * 64, cwd="/home/\u00e9lodie")
    fields = msgspec.structs.astuple(ev)
    wire.fit(ev)
    assert all(a is b for a, b in zip(msgspec.structs.astuple(ev), fields))


def test_only_the_named_fields_are_looked_at():
    ev = wire.Open(path="p" * 5000, image="i" * 5000)
    wire.fit(ev, frozenset({"image"}))
    assert len(ev.image) == wire.MAX_PATH and len(ev.path) == 5000
    with pytest.raises(TypeError, match="no field nope"):
        wire.fit(ev, frozenset({"nope"}))


def test_a_bound_fit_cannot_meet_is_refused_when_planned():
    with pytest.raises(TypeError, match="pattern"):
        wire.fit(wire.BlockExec(id="c", sha256="a" * 64))
