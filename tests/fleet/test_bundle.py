"""Bundles: signed by the hive, taken by an agent only when the hive's key
signed exactly these bytes and the version is newer than what it runs."""

import msgspec
import pytest

from fleet import Bundle, BundleRefused, Keeper, Signed, SigningKey, encode, selects, verify

KEY = SigningKey.generate()


def signed(version=1, **kw) -> Signed:
    return KEY.sign(Bundle(name="web", version=version, **kw))


def test_a_signed_bundle_is_read_back_as_signed():
    b = verify(encode(signed(7, labels={"role": "web"}, policy="version = 1\n", rules={"a.yml": "x"})), KEY.public)
    assert (b.name, b.version, b.labels, b.policy, b.rules) == ("web", 7, {"role": "web"}, "version = 1\n", {"a.yml": "x"})
    assert b.issued > 0


def test_a_bundle_altered_after_signing_is_refused():
    s = signed(policy="action = 'block'")
    altered = Signed(bundle=s.bundle.replace(b"block", b"audit"), signature=s.signature)
    with pytest.raises(BundleRefused, match="signature is not the hive's"):
        verify(altered, KEY.public)


def test_a_bundle_signed_by_another_key_is_refused():
    with pytest.raises(BundleRefused, match="signature is not the hive's"):
        verify(SigningKey.generate().sign(Bundle(name="web", version=1)), KEY.public)


def test_an_unsigned_or_garbled_bundle_is_refused_in_one_line():
    for data in (b"", b"\x00" * 10, msgspec.msgpack.encode(Bundle(name="web", version=1)),
                 msgspec.msgpack.encode({"bundle": b"x", "signature": b"short"})):
        with pytest.raises(BundleRefused) as e:
            verify(data, KEY.public)
        assert "\n" not in str(e.value)


def test_a_replayed_or_older_version_is_refused():
    with pytest.raises(BundleRefused, match="version 3 is not newer than the version running \\(3\\)"):
        verify(signed(3), KEY.public, running=3)
    with pytest.raises(BundleRefused, match="not newer"):
        verify(signed(2), KEY.public, running=3)
    assert verify(signed(4), KEY.public, running=3).version == 4


def test_labels_select_agents_that_carry_all_of_them():
    assert selects({}, {})
    assert selects({"role": "web"}, {"role": "web", "dc": "fra"})
    assert not selects({"role": "web", "dc": "ams"}, {"role": "web", "dc": "fra"})
    assert not selects({"role": "web"}, {})


def test_a_key_survives_its_bytes():
    again = SigningKey.from_bytes(KEY.private_bytes())
    assert again.public == KEY.public
    verify(again.sign(Bundle(name="web", version=1)), KEY.public)
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey.from_bytes(b"short")


def test_the_keeper_runs_the_newest_good_bundle_and_keeps_the_one_before(tmp_path):
    k = Keeper(tmp_path, KEY.public)
    assert k.start() is None and k.version == 0
    for v in (1, 2):
        data = encode(signed(v))
        k.keep(data, k.offer(data))
    assert k.version == 2 and k.previous().version == 1
    with pytest.raises(BundleRefused, match="not newer"):
        k.offer(encode(signed(1)))  # a replay of the one before

    again = Keeper(tmp_path, KEY.public)
    assert again.start().version == 2


def test_a_bundle_that_failed_to_load_is_not_taken_again(tmp_path):
    k = Keeper(tmp_path, KEY.public)
    bad = k.offer(encode(signed(5)))
    k.refuse(bad, "policy line 3: unknown hook 'exex'")
    with pytest.raises(BundleRefused, match="version 5 failed to load here before: policy line 3"):
        k.offer(encode(signed(5)))
    assert k.offer(encode(signed(6))).version == 6


def test_a_bundle_altered_on_disk_falls_back_to_the_previous_one(tmp_path):
    k = Keeper(tmp_path, KEY.public)
    for v in (1, 2):
        data = encode(signed(v, policy=f"v{v}"))
        k.keep(data, k.offer(data))
    current = tmp_path / "current.bundle"
    current.write_bytes(current.read_bytes().replace(b"v2", b"v9"))
    assert Keeper(tmp_path, KEY.public).start().policy == "v1"
