import msgspec
import pytest

from node import Config, ConfigError, load_config
from node._config import __file__ as config_module

EXAMPLE = __import__("pathlib").Path(config_module).with_name("immune.example.toml")


def test_example_file_lists_exactly_the_defaults():
    import tomllib

    raw = tomllib.loads(EXAMPLE.read_text())
    assert msgspec.convert(raw, Config) == Config()
    assert raw == msgspec.to_builtins(Config())
    assert load_config(EXAMPLE).hive.enroll_listen == "tcp://0.0.0.0:7401"


def test_enrollment_endpoint_follows_the_listen_port(tmp_path):
    assert load_config(None, hive_listen="tcp://127.0.0.1:9000").hive.enroll_listen == "tcp://127.0.0.1:9001"


def test_flags_override_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[node]\ndata = "/srv/a"\n[agent]\nspool_mb = 5\n')
    cfg = load_config(f, node_data="/srv/b", agent_hive=None)
    assert cfg.node.data == "/srv/b" and cfg.agent.spool_mb == 5
    assert cfg.agent.hive == "tcp://127.0.0.1:7400"


@pytest.mark.parametrize("text,reason", [
    ("[node\n", "Expected ']'"),
    ("[node]\nshutdown_timeout = 'x'\n", "node.shutdown_timeout: expected `float`, got `str`"),
    ("[agent]\nspool = 3\n", "unknown field `spool`"),
    ("[node]\nlog_level = 'loud'\n", "node.log_level: 'loud' is not one of"),
    ("[node]\nshutdown_timeout = -1\n", "must be positive"),
])
def test_bad_config_is_one_line_naming_file_and_reason(tmp_path, text, reason):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"config {f}: ") and reason in msg


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
