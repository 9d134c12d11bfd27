"""OTP supervision decisions, as a table, without tasks or sockets."""

import pytest

from actors import Decision, Restart, RestartPolicy, Strategy

P, T, X = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY


def policy(strategy, kinds="PPP", intensity=10):
    kind = {"P": P, "T": T, "X": X}
    p = RestartPolicy(strategy, [(n, kind[k]) for n, k in zip("abc", kinds)], intensity=intensity, period=5)
    for n in "abc"[: len(kinds)]:
        p.started(n)
    return p


CASES = [
    # strategy, kinds, who exits, crashed, expected decision
    ("one_for_one", "PPP", "b", True, Decision(start=["b"])),
    ("one_for_one", "PPP", "b", False, Decision(start=["b"])),  # permanent: even a normal return
    ("one_for_all", "PPP", "b", True, Decision(stop=["c", "a"], start=["a", "b", "c"])),
    ("rest_for_one", "PPP", "b", True, Decision(stop=["c"], start=["b", "c"])),
    ("rest_for_one", "PPP", "a", True, Decision(stop=["c", "b"], start=["a", "b", "c"])),
    ("one_for_one", "PTP", "b", False, Decision()),  # transient returning normally: left alone
    ("one_for_one", "PTP", "b", True, Decision(start=["b"])),  # transient crashing: restarted
    ("one_for_one", "PXP", "b", True, Decision(remove=["b"])),  # temporary: never restarted
    ("one_for_all", "PXP", "b", True, Decision(remove=["b"])),  # its exit restarts nobody
    # a sibling's crash takes the temporary child down under one_for_all; it stays down
    ("one_for_all", "XPP", "b", True, Decision(stop=["c", "a"], start=["b", "c"], remove=["a"])),
    ("rest_for_one", "PPX", "a", True, Decision(stop=["c", "b"], start=["a", "b"], remove=["c"])),
]


@pytest.mark.parametrize("strategy,kinds,who,crashed,expected", CASES)
def test_decision(strategy, kinds, who, crashed, expected):
    assert policy(Strategy(strategy), kinds).exited(who, crashed=crashed, now=0.0) == expected


def test_intensity_counts_restarts_of_all_children_within_the_period():
    p = policy(Strategy.ONE_FOR_ONE, intensity=2)
    assert p.exited("a", crashed=True, now=0.0).start == ["a"]
    p.started("a")
    assert p.exited("b", crashed=True, now=1.0).start == ["b"]
    p.started("b")
    d = p.exited("c", crashed=True, now=2.0)
    assert d.escalate and "3 restarts" in d.escalate
    assert d.stop == ["b", "a"]  # everything still running, in reverse order


def test_restarts_older_than_the_period_are_forgotten():
    p = policy(Strategy.ONE_FOR_ONE, intensity=1)
    for t in (0.0, 6.0, 12.0):
        d = p.exited("a", crashed=True, now=t)
        assert d.start == ["a"] and not d.escalate
        p.started("a")


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        RestartPolicy(Strategy.ONE_FOR_ONE, [("a", P), ("a", P)])
