"""hive/_regex.py: the one place rule, condition and template patterns are
compiled, in RE2 (linear time), with one-line reasons for what RE2 refuses."""

import random
import time

import pytest
import re2

from hive._regex import Regex, RegexError, shortest


def test_a_catastrophic_pattern_runs_in_linear_time():
    # Python's re takes seconds on 26 a's and never finishes on a few hundred.
    regex = Regex(r"(a+)+$")
    for n in (26, 100_000):
        start = time.perf_counter()
        assert not regex.search("a" * n + "b")
        assert time.perf_counter() - start < 0.5
    assert regex.search("xaaa")


@pytest.mark.parametrize("pattern,hint", [
    (r"foo(?=bar)", "lookahead is not supported"),
    (r"foo(?!bar)", "lookahead is not supported"),
    (r"(?<=x)foo", "lookbehind is not supported"),
    (r"(?<!x)foo", "lookbehind is not supported"),
    (r"(a)\1", "backreferences are not supported"),
    (r"(?P<a>x)(?P=a)", "named backreferences are not supported"),
    (r"(?>a+)b", "atomic groups are not supported"),
    (r"a++", "possessive quantifiers are not supported"),
    (r"end\Z", r"write \z for the end of the text"),
    (r"\u00e9", r"write \x{XXXX} for a code point"),
    (r"(unclosed", "missing )"),
    (r"a{2000}", "invalid repetition size"),
])
def test_what_re2_refuses_is_one_line_with_the_reason(pattern, hint, capfd):
    with pytest.raises(RegexError) as e:
        Regex(pattern)
    message = str(e.value)
    assert message.startswith(f"regular expression {pattern!r}: ") and hint in message
    assert "\n" not in message and e.value.reason in message
    assert capfd.readouterr().err == ""  # RE2's own log stays off stderr


def test_flags_and_python_spellings_that_re2_shares():
    assert not Regex("NC .*-e").search("nc 1 -e sh")
    assert Regex("NC .*-e", ignore_case=True).search("nc 1 -e sh")
    assert not Regex("^b$").search("a\nb\nc")
    assert Regex("^b$", multiline=True).search("a\nb\nc")
    assert not Regex("a.b").search("a\nb")
    assert Regex("a.b", dotall=True).search("a\nb")
    assert Regex(r"(?P<ip>\d+\.\d+)").first("v 12.34", 1) == "12.34"
    assert Regex(r"(?P<ip>\d+)(x)(?P<y>y)").names == {"ip": 1, "y": 3}
    assert Regex(r"end\z").search("the end")


def test_first_gives_a_group_of_the_first_match_in_characters():
    regex = Regex(r"é(.)(x)?")
    assert regex.groups == 2
    assert regex.first("aébc") == "éb"
    assert regex.first("aébc", 1) == "b"
    assert regex.first("aébc", 2) is None  # took no part
    assert regex.first("nothing") is None
    with pytest.raises(RegexError, match="no group 3"):
        regex.first("é", 3)


def test_text_that_is_not_valid_unicode_is_searched_not_refused():
    path = b"/tmp/\xff/x".decode("utf-8", "surrogateescape")
    assert Regex("/x$").search(path)
    assert Regex("^/tmp/(.)/x").first(path, 1) == "\udcff"


def _random_pattern(rng, depth=0) -> str:
    atoms = ["a", "b", ".", "[ab]", "[^a]", "\\s", "\\d", "\\.", "^", "$", "\\b", "[[:alpha:]]",
             "\\x{62}", "\\pL"]
    parts = []
    for _ in range(rng.randrange(1, 4)):
        if depth < 2 and rng.random() < 0.25:
            inner = "|".join(_random_pattern(rng, depth + 1) for _ in range(rng.randrange(1, 3)))
            atom = rng.choice(["(", "(?:", "(?P<g%d>" % rng.randrange(10**6), "(?i:"]) + inner + ")"
        else:
            atom = rng.choice(atoms)
        parts.append(atom + rng.choice(["", "", "*", "+", "?", "{2}", "{1,3}", "{0,2}", "{2,}", "*?"]))
    return "".join(parts)


def test_no_match_is_shorter_than_shortest_says():
    """A text shorter than ``shortest(pattern)`` is refused without asking RE2: that
    must never hide a match."""
    rng = random.Random(3)
    for _ in range(1000):
        pattern = _random_pattern(rng)
        try:
            regex = Regex(pattern)
        except RegexError:
            continue
        least, oracle = shortest(pattern), re2.compile(pattern)
        for _ in range(20):
            text = "".join(rng.choice("ab .1\n") for _ in range(rng.randrange(8)))
            found = oracle.search(text)
            assert found is None or len(found.group()) >= least, (pattern, text)
            assert (found is not None) == regex.search(text), (pattern, text, least)
    assert shortest("[^/]{100,}$") == 100 and shortest("a|") == 0 and shortest("\\Qx\\E") == 0


def test_a_yes_no_search_does_not_pay_for_groups():
    regex = Regex(r"(.{1,5}){150}x")
    text = "aé1 " * 4000
    assert not regex.search(text)  # RE2 builds its DFA states as it goes: once
    start = time.perf_counter()
    for _ in range(10):
        assert not regex.search(text)
    assert time.perf_counter() - start < 0.1  # 0.1 s each when RE2 also tracked the groups
    assert regex.first("ab" * 80 + "x") == "ab" * 80 + "x"
