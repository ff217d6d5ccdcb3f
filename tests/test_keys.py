"""The three service keys: generated once, exclusively, owner-only; weak or shared keys refused."""

from __future__ import annotations

import logging
import secrets
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.keys import KEY_NAMES, KeyError_, encode_key, key_path, load_keys
from app.main import create_app


def strong() -> SecretStr:
    return SecretStr(encode_key(secrets.token_bytes(32)))


def test_missing_keys_are_generated_owner_only_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="app.keys"):
        keys = load_keys(Settings(data_dir=data_dir))

    for name in KEY_NAMES:
        path = key_path(data_dir, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    warned = {record.__dict__["env"] for record in caplog.records}
    assert warned == {"SHOPVAULT_JWT_KEY", "SHOPVAULT_MASTER_KEY", "SHOPVAULT_INDEX_KEY"}
    # The warning names the setting, never the key itself.
    for record in caplog.records:
        for secret in (keys.jwt, keys.master_ring.newest, keys.index):
            assert encode_key(secret) not in record.getMessage()
            assert encode_key(secret) not in str(record.__dict__)
    assert len({keys.jwt, keys.master_ring.newest, keys.index}) == 3
    assert len(keys.master_ring.keys) == 1


def test_generated_keys_are_reused_not_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_keys(settings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.keys"):
        second = load_keys(settings)
    assert second == first
    assert caplog.records == []


def test_an_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    """Creation is exclusive: a process that starts second uses the first one's key."""
    theirs = secrets.token_bytes(32)
    tmp_path.joinpath("jwt.key").write_text(encode_key(theirs) + "\n")
    keys = load_keys(Settings(data_dir=tmp_path))
    assert keys.jwt == theirs
    assert tmp_path.joinpath("jwt.key").read_text().strip() == encode_key(theirs)


def test_keys_from_the_environment_are_used_and_nothing_is_written(tmp_path: Path) -> None:
    jwt, master, index = strong(), strong(), strong()
    keys = load_keys(
        Settings(data_dir=tmp_path / "data", jwt_key=jwt, master_key=master, index_key=index)
    )
    assert encode_key(keys.jwt) == jwt.get_secret_value()
    assert not (tmp_path / "data").exists()


WEAK_KEYS = {
    "too short": encode_key(secrets.token_bytes(31)),
    # Long enough once the characters outside the alphabet were dropped, as lenient decoders do.
    "not base64url": "this is not a key!" * 4,
    "repeated byte": encode_key(b"a" * 32),
    "two alternating bytes": encode_key(b"ab" * 32),
    "a repeated word": encode_key(b"password" * 4),
}


@pytest.mark.parametrize("weak", WEAK_KEYS.values(), ids=WEAK_KEYS.keys())
def test_the_app_refuses_to_start_with_a_weak_jwt_key(tmp_path: Path, weak: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        jwt_key=SecretStr(weak),
        master_key=strong(),
        index_key=strong(),
    )
    with pytest.raises(KeyError_, match="SHOPVAULT_JWT_KEY"):
        create_app(settings)


@pytest.mark.parametrize("name", ["master", "index"])
def test_weak_master_and_index_keys_are_refused_too(tmp_path: Path, name: str) -> None:
    values = {"jwt_key": strong(), "master_key": strong(), "index_key": strong()}
    values[f"{name}_key"] = SecretStr(encode_key(b"\x00" * 32))
    with pytest.raises(KeyError_, match=f"SHOPVAULT_{name.upper()}_KEY"):
        load_keys(Settings(data_dir=tmp_path, **values))


@pytest.mark.parametrize("pair", [("jwt", "master"), ("jwt", "index"), ("master", "index")])
def test_the_three_keys_must_differ(tmp_path: Path, pair: tuple[str, str]) -> None:
    values = {"jwt_key": strong(), "master_key": strong(), "index_key": strong()}
    shared = strong()
    for name in pair:
        values[f"{name}_key"] = shared
    with pytest.raises(KeyError_, match="must be different"):
        create_app(
            Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", **values)
        )


def test_a_weak_key_file_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("index.key").write_text(encode_key(b"z" * 32) + "\n")
    with pytest.raises(KeyError_, match="SHOPVAULT_INDEX_KEY"):
        load_keys(Settings(data_dir=tmp_path))
