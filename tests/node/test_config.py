import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from node import Config, ConfigError, load_config
from node._config import HIVE_FOLDERS, POLICY_FILE, READ_DATA, WRITE_DATA, ranges
from node._config import __file__ as config_module

EXAMPLE = Path(config_module).with_name("immune.example.toml")


def test_example_file_lists_exactly_the_defaults():
    raw = tomllib.loads(EXAMPLE.read_text())
    assert msgspec.convert(raw, Config) == Config()
    assert raw == {k: v for k, v in msgspec.to_builtins(Config()).items() if k != "outputs"}  # none by default
    assert load_config(EXAMPLE).hive.enroll_listen == "tcp://0.0.0.0:7401"


def test_example_file_states_each_range():
    text = EXAMPLE.read_text()
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^(\w+) = .*#(.*)$", text, re.M)}
    # The outputs' keys are documented in a commented-out [[outputs]] table.
    lines |= {f"outputs.{m.group(1)}": m.group(2) for m in re.finditer(r"^# (\w+) = .*#(.*)$", text, re.M)}
    for key, allowed in ranges().items():
        span = allowed.split(" ", 2)[2]  # "an integer from 1 to 4096" -> "from 1 to 4096"
        assert lines[key if key.startswith("outputs.") else key.split(".")[1]].endswith(span), key


def test_the_bounds_shared_with_the_wire_and_the_router():
    import wire
    from hive._actors import DEFAULT_MAX_FRAME

    assert Config().hive.max_frame == DEFAULT_MAX_FRAME
    assert ranges()["agent.batch"] == f"an integer from 1 to {wire.MAX_BATCH}"


def largest_events() -> list:
    """The largest events an agent can send, an exec and a notice: the texts
    the agent writes (enrichment, a notice's) at their bounds in 4-byte
    characters, the kernel's at the size of its record with every byte not
    UTF-8 (3 bytes each once decoded), after ``wire.fit``."""
    import wire

    wide, bad = "\U0001F600", "\ufffd"
    common = dict(time=wire.INT64_MAX, pid=wire.PID_MAX, tid=wire.PID_MAX, ppid=wire.PID_MAX, uid=2**32 - 1,
                  euid=2**32 - 1, gid=2**32 - 1, cgroup=wire.INT64_MAX, comm=bad * 15, verdict="block",
                  rule=wide * 300, image=wide * 5000, cmdline=wide * 20000, parent_image=wide * 5000,
                  parent_cmdline=wide * 20000, user=wide * 300, sha256=wide * 300, unit=wide * 300,
                  container=wide * 300)
    path = "/\u2026/" + "/".join([bad * 63] * 16)  # 16 components of 63 bytes, cut
    return [wire.fit(wire.Exec(**common, filename=bad * 255, exe=path, cwd=path, argv=[bad * 1280],
                               argv_truncated=True, result=-(2**31))),
            wire.fit(wire.Notice(**common, what=wide * 300, count=wire.INT64_MAX, detail=wide * 20000))]


def test_an_agent_batch_is_never_above_the_least_max_frame():
    """The relay closes a batch before it would pass ``wire.MAX_BATCH_BYTES``
    (only a batch of one larger event may), so a batch is at most that or
    the largest event; the least ``hive.max_frame`` is above their sum."""
    import wire
    from actors import Codec

    codec = Codec(wire.AgentMessage)
    sizes = []
    for ev in largest_events():
        frame = codec.encode(wire.EventBatch(seq=wire.INT64_MAX, stream="s" * wire.MAX_NAME, events=[ev]))
        assert codec.decode(frame).events == [ev]
        sizes.append(len(frame))
    least = int(ranges()["hive.max_frame"].split()[3])
    print(f"largest frames of one event (exec, notice): {sizes} bytes; least max_frame {least}")
    assert max(sizes) < 240 << 10  # as wire.MAX_BATCH_BYTES says
    assert least >= wire.MAX_BATCH_BYTES + max(sizes) + (64 << 10)


def test_enrollment_endpoint_follows_the_listen_port(tmp_path):
    assert load_config(None, hive_listen="tcp://127.0.0.1:9000").hive.enroll_listen == "tcp://127.0.0.1:9001"


def test_flags_override_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[node]\ndata = "/srv/a"\n[agent]\nspool_mb = 5\n')
    cfg = load_config(f, node_data="/srv/b", agent_hive=None)
    assert cfg.node.data == "/srv/b" and cfg.agent.spool_mb == 5
    assert cfg.agent.hive == "tcp://127.0.0.1:7400"


def _error(tmp_path, text: str | bytes, **kw) -> str:
    f = tmp_path / "bad.toml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(f, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg.removeprefix(f"config {f}: ")


@pytest.mark.parametrize("text,reason", [
    # the file itself
    ("[node\n", "Expected ']'"),
    (b'[node]\nlog_level = "\xff"\n', "not UTF-8 text (byte 20)"),
    ("[nodes]\n", "top level: object contains unknown field `nodes`"),
    ("node = 5\n", "node: expected `object`, got `int`"),
    ("[agent]\nspool = 3\n", "agent: object contains unknown field `spool`"),
    # [node]
    ("[node]\ndata = ''\n", "node.data: must name a folder"),
    ('[node]\ndata = "a\\u0000b"\n', "node.data: contains a NUL character"),
    (f"[node]\ndata = '/{'d' * 90}'\n", "node.data: '/ddd"),
    ("[node]\nlog_level = 'loud'\n", "node.log_level: 'loud' is not one of"),
    ("[node]\nshutdown_timeout = 'x'\n",
     "node.shutdown_timeout: must be a number greater than 0 and at most 600, not 'x'"),
    ("[node]\nshutdown_timeout = 0\n", "node.shutdown_timeout: must be a number greater than 0"),
    ("[node]\nshutdown_timeout = -1\n", "node.shutdown_timeout: must be a number greater than 0"),
    ("[node]\nshutdown_timeout = nan\n", "node.shutdown_timeout: must be a number greater than 0"),
    ("[node]\nshutdown_timeout = inf\n", "node.shutdown_timeout: must be a number greater than 0"),
    # [hive]
    ("[hive]\nlisten = 5\n", "hive.listen: expected `str`, got `int`"),
    ("[hive]\nlisten = 'nowhere'\n", "hive.listen: 'nowhere' is not a ZeroMQ endpoint"),
    ("[hive]\nlisten = 'tcp://host'\n", "hive.listen: 'tcp://host' is not a ZeroMQ endpoint"),
    ("[hive]\nlisten = 'tcp://host:0'\n", "hive.listen: 'tcp://host:0' is not a ZeroMQ endpoint"),
    ("[hive]\nlisten = 'tcp://host:65536'\n", "hive.listen: 'tcp://host:65536' is not"),
    ("[hive]\nlisten = 'udp://host:1'\n", "hive.listen: 'udp://host:1' is not"),
    ("[hive]\nlisten = 'tcp://host:65535'\n", "hive.enroll_listen (the default): set it, since hive.listen"),
    ("[hive]\nlisten = 'ipc:///run/h'\n", "hive.enroll_listen (the default): set it"),
    ("[hive]\nenroll_listen = 'tcp://:7401'\n", "hive.enroll_listen: 'tcp://:7401' is not"),
    ("[hive]\nrules = 'r'\n", "hive.rules: expected `array`, got `str`"),
    ("[hive]\nrules = ['']\n", "hive.rules: an empty folder name"),
    ("[hive]\nplaybooks = [5]\n", "hive.playbooks[0]: expected `str`, got `int`"),
    ("[hive]\nwebhook = 'ftp://soc'\n", "hive.webhook: 'ftp://soc' is not an http:// or https:// URL"),
    ("[hive]\nwebhook = 'https://'\n", "hive.webhook: 'https://' is not"),
    ("[hive]\nwebhook = 'https://soc.examp[le/hook'\n", "hive.webhook: 'https://soc.examp[le/hook' is not"),
    ("[hive]\nwebhook = 'https://soc:99999/hook'\n", "hive.webhook: 'https://soc:99999/hook' is not"),
    ("[hive]\nwebhook = 'https://soc:0/hook'\n", "hive.webhook: 'https://soc:0/hook' is not"),
    ("[hive]\ndry_run = 'yes'\n", "hive.dry_run: expected `bool`, got `str`"),
    ("[hive]\nheartbeat_timeout = -1\n", "hive.heartbeat_timeout: must be a number from 1 to 86400, not -1"),
    ("[hive]\nheartbeat_timeout = 86401\n", "hive.heartbeat_timeout: must be a number from 1 to 86400"),
    ("[hive]\nretention_days = 0\n", "hive.retention_days: must be a number greater than 0 and at most 36500"),
    ("[hive]\nretention_mb = 0\n", "hive.retention_mb: must be an integer from 1 to 16777216, not 0"),
    ("[hive]\nmax_frame = -5\n", "hive.max_frame: must be an integer from 1048576 to 67108864, not -5"),
    ("[hive]\nmax_frame = 1048575\n", "hive.max_frame: must be an integer from 1048576"),
    ("[hive]\nmax_frame = 67108865\n", "hive.max_frame: must be an integer from 1048576"),
    ("[hive]\nmax_frame = 1e6\n", "hive.max_frame: must be an integer from 1048576 to 67108864, not 1000000.0"),
    ("[hive]\nmax_frame = true\n", "hive.max_frame: must be an integer from 1048576 to 67108864, not True"),
    ("[node]\nlog_format = 'xml'\n", "node.log_format: 'xml' is not one of text, json"),
    ("[node]\nlog_to = 'syslog'\n", "node.log_to: 'syslog' is not one of stderr, journald"),
    # [store]
    ("[store]\nurl = 'hive.db'\n", "store.url: 'hive.db' is not sqlite:///PATH (an absolute path) or "
     "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    ("[store]\nurl = 'sqlite:///'\n", "store.url: 'sqlite:///' is not"),
    ("[store]\nurl = 'mysql://db/hive'\n", "store.url: 'mysql://db/hive' is not sqlite:///PATH"),
    ("[store]\nurl = 'postgresql://hive:secret@db.example.org'\n",
     "store.url: 'postgresql://hive:...@db.example.org' names no database"),
    ("[store]\nurl = 'postgresql://db:99999/hive'\n",
     "store.url: 'postgresql://db:99999/hive': the port is not a number from 1 to 65535"),
    # [agent]
    ("[agent]\nid = 'web 1'\n", "agent.id: 'web 1': up to 256 characters, no spaces or control characters"),
    (f"[agent]\nid = '{'w' * 257}'\n", "agent.id: 'www"),
    ("[agent]\nhive = '127.0.0.1:7400'\n", "agent.hive: '127.0.0.1:7400' is not a ZeroMQ endpoint"),
    ("[agent]\nhive = []\n", "agent.hive: an empty list: give at least one hive endpoint"),
    ("[agent]\nhive = ['tcp://10.0.0.1:7400', 'tcp://10.0.0.2']\n",
     "agent.hive[1]: 'tcp://10.0.0.2' is not a ZeroMQ endpoint"),
    ("[agent]\nhive = ['tcp://10.0.0.1:7400', 'tcp://10.0.0.1:7400']\n",
     "agent.hive[1]: 'tcp://10.0.0.1:7400' is listed twice"),
    ("[agent]\nhive = 7400\n", "agent.hive: expected `str | array`, got `int`"),
    ("[agent]\nhive = ['tcp://10.0.0.1:7400', 5]\n", "agent.hive[1]: expected `str`, got `int`"),
    ("[agent]\nfailover_after = 0\n", "agent.failover_after: must be a number from 0.1 to 3600, not 0"),
    ("[agent]\nhive_key = 'abc'\n", "agent.hive_key: not a Z85 CURVE key (40 characters expected, got 3)"),
    (f"[agent]\nhive_key = '{'_' * 40}'\n", "agent.hive_key: not a Z85 CURVE key"),
    ("[agent]\nspool_mb = 0\n", "agent.spool_mb: must be an integer from 1 to 1048576, not 0"),
    ("[agent]\nbatch = 0\n", "agent.batch: must be an integer from 1 to 4096, not 0"),
    ("[agent]\nbatch = 4097\n", "agent.batch: must be an integer from 1 to 4096, not 4097"),
    ("[agent]\nheartbeat = 0.1\n", "agent.heartbeat: must be a number from 0.5 to 3600, not 0.1"),
    # [sensor]
    ("[sensor]\nenabled = 1\n", "sensor.enabled: expected `bool`, got `int`"),
    ('[sensor]\npolicy = "\\u0000"\n', "sensor.policy: contains a NUL character"),
    ("[sensor]\nscope = 'everything'\n", "sensor.scope: 'everything': expected machine, cgroup:PATH, netns:PATH "
                                        "or container:SELECTOR"),
    ("[sensor]\nscope = 'cgroup:'\n", "sensor.scope: 'cgroup:': expected"),
    ("[sensor]\nscope = 'container:image=x,tag=y'\n", "sensor.scope: container:image=x,tag=y: 'tag=y': expected KEY=GLOB"),
    ("[sensor]\nwatchdog_ms = 5\n", "sensor.watchdog_ms: must be an integer from 10 to 60000, not 5"),
    ("[sensor]\nfold_ms = -1\n", "sensor.fold_ms: must be an integer from 0 to 60000, not -1"),
    ("[sensor]\nfold_ms = 60001\n", "sensor.fold_ms: must be an integer from 0 to 60000, not 60001"),
    ("[ai]\nurl = 'ftp://model'\nmodel = 'm'\n", "ai.url: 'ftp://model' is not an http:// or https:// URL"),
    ("[ai]\nurl = 'http://'\nmodel = 'm'\n", "ai.url: 'http://' is not an http:// or https:// URL"),
    ("[ai]\nurl = 'http://h:8080/v1?key=x'\nmodel = 'm'\n", "ai.url: 'http://h:8080/v1?key=x': no query string"),
    ("[ai]\nurl = 'http://127.0.0.1:8080/v1'\n", "ai.model (the default): set it to the model's name"),
    ("[ai]\ntoken = 'two words'\n", "ai.token: 1 to 4096 printable ASCII characters without spaces"),
    ("[ai]\ncalls_per_hour = 0\n", "ai.calls_per_hour: must be an integer from 1 to 100000, not 0"),
    ("[ai]\ncalls_per_hour = 'lots'\n", "ai.calls_per_hour: must be an integer from 1 to 100000, not 'lots'"),
    ("[ai]\ntimeout = 0\n", "ai.timeout: must be a number greater than 0 and at most 600, not 0"),
    ("[ai]\nretries = 11\n", "ai.retries: must be an integer from 0 to 10, not 11"),
    ("[ai]\nendpoint = 'http://x'\n", "ai: object contains unknown field `endpoint`"),
    # [profile]
    ("[profile]\nenabled = 'yes'\n", "profile.enabled: expected `bool`, got `str`"),
    ("[profile]\nlearn_hours = 0\n", "profile.learn_hours: must be a number greater than 0 and at most 8760, not 0"),
    ("[profile]\nstable_hours = -1\n", "profile.stable_hours: must be a number from 0 to 8760, not -1"),
    ("[profile]\nrealert_hours = 9000\n", "profile.realert_hours: must be a number from 0 to 8760, not 9000"),
    ("[profile]\nfolder_cap = 0\n", "profile.folder_cap: must be an integer from 1 to 4096, not 0"),
    ("[profile]\npeer_cap = 5000\n", "profile.peer_cap: must be an integer from 1 to 4096, not 5000"),
    ("[profile]\nmax_workloads = 0\n", "profile.max_workloads: must be an integer from 1 to 65536, not 0"),
    ("[profile]\nmax_items = 15\n", "profile.max_items: must be an integer from 16 to 65536, not 15"),
    ("[profile]\nlearn = 3\n", "profile: object contains unknown field `learn`"),
    ("[profile]\nenforce_action = 'block'\n", "profile.enforce_action: 'block' is not one of kill, alert"),
    # [cluster]
    ("[cluster]\nnats = ['127.0.0.1:4222']\n", "cluster.nats[0]: '127.0.0.1:4222' is not nats://HOST:PORT"),
    ("[cluster]\nnats = ['nats://a:1', 'nats://b']\n", "cluster.nats[1]: 'nats://b' is not nats://HOST:PORT"),
    ("[cluster]\nnats = ['nats://a:1', 'nats://a:1']\n", "cluster.nats: names a server twice"),
    ("[cluster]\nnode = 'a b'\n", "cluster.node: 'a b': 1-64 letters, digits or -_."),
    ("[cluster]\nnats = ['nats://a:1']\nrole = 'boss'\n", "cluster.role: 'boss' is not one of router, detect"),
    ("[cluster]\nrole = 'detect'\n", "cluster.role: 'detect' needs cluster.nats: a single node does everything"),
    ("[cluster]\npartitions = 0\n", "cluster.partitions: must be an integer from 1 to 1024, not 0"),
    ("[cluster]\ncorrelate_partitions = 0\n", "cluster.correlate_partitions: must be an integer from 1 to 256, not 0"),
    ("[cluster]\ncorrelate_partitions = 257\n",
     "cluster.correlate_partitions: must be an integer from 1 to 256, not 257"),
    ("[cluster]\nlease = 0.5\n", "cluster.lease: must be a number from 1 to 300, not 0.5"),
    # [herd]
    ("[herd]\nshare_days = 0\n", "herd.share_days: must be a number greater than 0 and at most 365, not 0"),
    ("[herd]\nmax_days = 400\n", "herd.max_days: must be a number greater than 0 and at most 365, not 400"),
    ("[herd]\npeers = 'a'\n", "herd.peers: expected `array`"),
    ("[[herd.peers]]\nurl = 'https://a.example/c/'\n", "herd.peers[0]: object missing required field `name`"),
    ("[[herd.peers]]\nname = 'a'\n", "herd.peers[0].url: set one of url (a TAXII collection) and path"),
    ("[[herd.peers]]\nname = 'a'\nurl = 'https://a/'\npath = '/x'\n", "herd.peers[0].url: set one of url"),
    ("[[herd.peers]]\nname = 'a'\nurl = 'http://a.example/c/'\n", "herd.peers[0].url: 'http://a.example/c/' is "
     "not an https:// URL"),
    ("[[herd.peers]]\nname = 'a b'\npath = '/x'\n", "herd.peers[0].name: 'a b': 1 to 64 letters"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\n[[herd.peers]]\nname = 'a'\npath = '/y'\n",
     "herd.peers[1].name: 'a' is the name of an earlier peer"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\ntrust = 'blind'\n", "herd.peers[0].trust: 'blind' is not one of "
     "observe, enforce"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\ntrust = 'enforce'\n", "herd.peers[0].key: an enforce peer must "
     "pin its key"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\nkey = 'abc'\n", "herd.peers[0].key: a herd key is 64 hex digits"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\ntoken = 'imt_x'\n", "herd.peers[0].token: only for a url"),
    ("[[herd.peers]]\nname = 'a'\nurl = 'https://a/'\ntoken = 'has space'\n", "herd.peers[0].token: 1 to 4096"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\nca = '/ca.pem'\n", "herd.peers[0].ca: only for a url"),
    ("[[herd.peers]]\nname = 'a'\npath = '/x'\ninterval = 1\n", "herd.peers[0].interval: expected `float` >= 5"),
    ('[[herd.peers]]\nname = "a"\npath = "/x\\u0000"\n', "herd.peers[0].path: contains a NUL character"),
])
def test_bad_config_is_one_line_naming_file_key_and_reason(tmp_path, text, reason):
    assert _error(tmp_path, text).startswith(reason)


@pytest.mark.parametrize("text", [
    "[node]\nshutdown_timeout = 600\n",
    "[hive]\nmax_frame = 1048576\n[agent]\nbatch = 4096\n",
    "[hive]\nmax_frame = 67108864\nheartbeat_timeout = 1\n",
    "[hive]\nlisten = 'tcp://[::1]:7400'\nwebhook = 'https://soc.example/hook'\n",
    "[hive]\nlisten = 'ipc:///run/immune/hive'\nenroll_listen = 'ipc:///run/immune/enroll'\n",
    "[agent]\nid = 'web-1.example.org'\nheartbeat = 0.5\nhive_key = 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7'\n",
    "[sensor]\nscope = 'netns:blue'\nwatchdog_ms = 10\nfold_ms = 0\n",
    "[store]\nurl = 'sqlite:///srv/shared/hive.db'\n",
    "[ai]\nurl = 'https://llm.internal:8443/v1/chat/completions'\nmodel = 'qwen2.5'\ncalls_per_hour = 100000\n"
    "retries = 0\ntimeout = 600\ndelay = 0\nmax_kb = 4\n",
    "[profile]\nlearn_hours = 8760\nstable_hours = 0\nrealert_hours = 0\nfolder_cap = 1\nmax_items = 16\n",
    "[store]\nurl = 'postgresql://hive:secret@db.example.org:5432/immune'\n",
    "[store]\nurl = 'postgres:///immune'\n",
    "[cluster]\nnats = ['nats://10.0.0.1:4222', 'tls://nats.example:4222']\nnode = 'hive-1'\nrole = 'detect'\n"
    "partitions = 1024\ncorrelate_partitions = 256\nlease = 300\n",
    "[herd]\nserve = false\nshare_days = 365\nmax_days = 0.5\n",
    f"[[herd.peers]]\nname = 'hive-a'\nurl = 'https://10.0.0.1:7480/taxii2/immune/collections/x/'\ntoken = 'imt_a.b'\n"
    f"trust = 'enforce'\nkey = '{'ab' * 32}'\nca = '/etc/immune/a.crt'\ninterval = 5\n"
    "[[herd.peers]]\nname = 'feed'\npath = '/srv/misp.json'\ninterval = 86400\n",
])
def test_values_at_their_bounds_load(tmp_path, text):
    f = tmp_path / "ok.toml"
    f.write_text(text)
    load_config(f)


@pytest.mark.parametrize("flag,value,reason", [
    ("hive_listen", "nowhere", "--listen: 'nowhere' is not a ZeroMQ endpoint"),
    ("agent_hive", "tcp://x", "--hive: 'tcp://x' is not a ZeroMQ endpoint"),
    ("agent_hive", ["tcp://127.0.0.1:7400", "tcp://x"], "--hive: 'tcp://x' is not a ZeroMQ endpoint"),
    ("node_data", "", "--data: must name a folder"),
    ("agent_id", "a\tb", "--id: 'a\\tb': up to 256"),
    ("sensor_scope", "galaxy", "--scope: 'galaxy': expected machine"),
    ("sensor_policy", "p\0", "--policy: contains a NUL character"),
    ("cluster_role", "router", "--role: 'router' needs cluster.nats"),
])
def test_flags_are_checked_like_the_keys_they_override(tmp_path, flag, value, reason):
    f = tmp_path / "c.toml"
    f.write_text("[hive]\nlisten = 'tcp://127.0.0.1:9000'\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, **{flag: value})
    assert str(info.value) == reason or str(info.value).startswith(reason)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_a_folder_given_as_the_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=f"^config {tmp_path}: is a folder, not a file$"):
        load_config(tmp_path)


# -- what a command needs on disk ------------------------------------------------


def test_a_missing_data_folder_is_made(tmp_path):
    data = tmp_path / "a" / "b"
    load_config(None, check={WRITE_DATA}, node_data=str(data))
    assert data.is_dir() and list(data.iterdir()) == []  # the write probe is gone


def test_a_read_only_command_does_not_make_the_data_folder(tmp_path):
    load_config(None, check={READ_DATA}, node_data=str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("check", [WRITE_DATA, READ_DATA])
def test_a_data_folder_that_is_a_file_is_refused(tmp_path, check):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(None, check={check}, node_data=str(tmp_path / "f"))
    assert str(info.value) == f"--data: {tmp_path}/f: not a folder"


def test_a_data_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    f = tmp_path / "c.toml"
    f.write_text(f"[node]\ndata = '{tmp_path}/f/d'\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, check={WRITE_DATA})
    assert str(info.value) == f"config {f}: node.data: {tmp_path}/f/d: cannot make it: Not a directory"


def test_rule_and_playbook_folders_must_exist_for_the_hive(tmp_path):
    (tmp_path / "file").write_text("")
    f = tmp_path / "c.toml"
    f.write_text(f"[hive]\nrules = ['{tmp_path}']\nplaybooks = ['{tmp_path}/file']\n")
    load_config(f)  # not checked for commands that do not load them
    with pytest.raises(ConfigError) as info:
        load_config(f, check={HIVE_FOLDERS})
    assert str(info.value) == f"config {f}: hive.playbooks: {tmp_path}/file: not a folder"
    f.write_text(f"[hive]\nrules = ['{tmp_path}/none']\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, check={HIVE_FOLDERS})
    assert str(info.value) == f"config {f}: hive.rules: {tmp_path}/none: no such folder"


def test_the_policy_file_must_be_readable_for_the_sensor(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, check={POLICY_FILE}, sensor_policy=str(tmp_path / "p.toml"))
    assert str(info.value) == f"--policy: {tmp_path}/p.toml: No such file or directory"
    with pytest.raises(ConfigError) as info:
        load_config(None, check={POLICY_FILE}, sensor_policy=str(tmp_path))
    assert str(info.value) == f"--policy: {tmp_path}: is a folder, not a file"


def test_herd_peer_files_must_be_readable_for_the_hive(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f"[[herd.peers]]\nname = 'a'\npath = '{tmp_path}/missing.json'\n"
                 f"[[herd.peers]]\nname = 'b'\nurl = 'https://b/'\nca = '{tmp_path}'\n")
    load_config(f)  # the values are good
    with pytest.raises(ConfigError, match=r"herd.peers\[0\].path: .*missing.json: No such file"):
        load_config(f, check={HIVE_FOLDERS})
    (tmp_path / "missing.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"herd.peers\[1\].ca: .*: is a folder, not a file"):
        load_config(f, check={HIVE_FOLDERS})


def test_store_location_is_the_data_folder_or_the_url(tmp_path):
    assert load_config(None, node_data=str(tmp_path)).store_location == tmp_path / "hive.db"
    f = tmp_path / "s.toml"
    f.write_text("[store]\nurl = 'sqlite:///srv/shared/hive.db'\n")
    assert str(load_config(f).store_location) == "/srv/shared/hive.db"
    f.write_text("[store]\nurl = 'postgresql://hive:pw@db:5432/immune'\n")
    assert load_config(f).store_location == "postgresql://hive:pw@db:5432/immune"


def test_agent_hive_is_one_endpoint_or_a_list_in_order_of_preference(tmp_path):
    assert load_config(None).agent.endpoints == ["tcp://127.0.0.1:7400"]
    f = tmp_path / "h.toml"
    f.write_text("[agent]\nhive = 'tcp://10.0.0.1:7400'\n")
    assert load_config(f).agent.endpoints == ["tcp://10.0.0.1:7400"]
    f.write_text("[agent]\nhive = ['tcp://10.0.0.1:7400', 'ipc:///run/immune/b']\nfailover_after = 0.5\n")
    cfg = load_config(f)
    assert cfg.agent.endpoints == ["tcp://10.0.0.1:7400", "ipc:///run/immune/b"]
    assert cfg.agent.failover_after == 0.5
    # Several --hive flags replace the file's list.
    cfg = load_config(f, agent_hive=["tcp://10.0.0.3:7400", "tcp://10.0.0.4:7400"])
    assert cfg.agent.endpoints == ["tcp://10.0.0.3:7400", "tcp://10.0.0.4:7400"]
