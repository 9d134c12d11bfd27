"""The router's fair share of the store among agents (a plain object)."""

from hive._fair import FairQueue

K = 1024


def sent(fq):
    return [item for _, item in fq.take()]


def test_a_small_batch_goes_at_the_next_turn_while_large_ones_wait_for_their_share():
    fq = FairQueue(window=8 * K, agent_budget=64 * K, quantum=1 * K)
    for i in range(4):
        assert fq.offer("big", f"big{i}", 4 * K)
    assert fq.offer("good", "good0", 100)
    # Turn by turn: "big" needs four turns of 1 KiB for one batch, "good" one.
    assert sent(fq) == ["good0", "big0", "big1"]  # then the window (8 KiB) is full
    assert fq.in_flight_bytes == 8 * K + 100 and fq.queued_bytes == 8 * K
    assert fq.offer("good", "good1", 100)
    assert sent(fq) == []  # nothing more until the store answers
    fq.answered("good")
    fq.answered("big")
    assert sent(fq) == ["good1", "big2"]  # good's next turn comes first; big's share grows to a batch
    fq.answered("big")
    assert sent(fq) == ["big3"]


def test_an_agent_past_its_budget_is_refused_until_the_store_answers():
    fq = FairQueue(window=4 * K, agent_budget=8 * K, quantum=1 * K)
    assert fq.offer("a", 1, 4 * K) and fq.offer("a", 2, 4 * K)
    assert not fq.offer("a", 3, 1)
    assert fq.offer("b", 1, 8 * K)  # each agent has its own budget; a first batch always fits
    assert [a for a, _ in fq.take()] == ["a"]  # a's 4 KiB fill the window
    fq.answered("a")
    assert fq.offer("a", 3, 4 * K)
    fq.answered("nobody")  # an answer to a batch an earlier router sent
    assert fq.in_flight_bytes == 0


def test_equal_agents_share_equally():
    fq = FairQueue(window=1 << 30, agent_budget=1 << 30, quantum=1 * K)
    for i in range(10):
        for agent in "abc":
            fq.offer(agent, (agent, i), 1 * K)
    order = [agent for agent, _ in fq.take()]
    assert order == list("abc") * 10
    assert fq.queued_bytes == 0
