"""The three service keys: generated once, exclusively, owner-only; weak or shared keys refused."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.keyring import master_key_id, parse_ring
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


# --- the master key ring ------------------------------------------------------------------------


def test_the_generated_master_key_is_a_ring_of_one_in_an_owner_only_file(tmp_path: Path) -> None:
    keys = load_keys(Settings(data_dir=tmp_path))
    path = key_path(tmp_path, "master")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_ring(path.read_text(), "master.key") == keys.master_ring
    assert keys.master_ring.ids == (master_key_id(keys.master_ring.newest),)
    # Written whole next to it, then linked into place: nothing else is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.key", "jwt.key", "master.key"]


STARTER = """
import sys
import time
from pathlib import Path

from app.config import Settings
from app.keys import KeyError_, encode_key, load_keys

root = Path(sys.argv[1])
while not (root / "go").exists():
    time.sleep(0.0005)
for n in range(int(sys.argv[2])):
    try:
        keys = load_keys(Settings(data_dir=root / str(n)))
    except KeyError_ as exc:
        print(n, "refused:", exc)
        continue
    print(n, encode_key(keys.jwt), keys.master_ring.ids, encode_key(keys.index))
"""


def test_processes_starting_together_agree_on_the_generated_keys(tmp_path: Path) -> None:
    """Each key file appears whole or not at all: no process reads a half-written key.

    Several processes race through the same fresh data directories, many times over, so that
    some of them read a key file while another is creating it (with a file created empty and
    then written, this fails on most runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPVAULT_")}
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(tmp_path), "200"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    (tmp_path / "go").touch()
    results = [starter.communicate(timeout=120) for starter in starters]
    assert [starter.returncode for starter in starters] == [0] * 6, [err for _, err in results]
    assert "refused" not in "".join(out for out, _ in results)
    assert len({out for out, _ in results}) == 1


def test_a_key_staged_by_an_earlier_version_joins_the_ring_as_the_newest(tmp_path: Path) -> None:
    """The single-key rotation of earlier versions staged ``master.key.next`` and may have
    committed data keys wrapped by it before it crashed: that key must not be lost."""
    old, staged = secrets.token_bytes(32), secrets.token_bytes(32)
    tmp_path.joinpath("master.key").write_text(encode_key(old) + "\n")
    tmp_path.joinpath("master.key.next").write_text(encode_key(staged) + "\n")
    keys = load_keys(Settings(data_dir=tmp_path))
    assert keys.master_ring.keys == (old, staged)
    assert not tmp_path.joinpath("master.key.next").exists()
    assert load_keys(Settings(data_dir=tmp_path)).master_ring == keys.master_ring


def test_a_weak_line_in_the_ring_file_is_refused_by_its_place(tmp_path: Path) -> None:
    good = encode_key(secrets.token_bytes(32))
    tmp_path.joinpath("master.key").write_text(f"# comment\n{good}\n{encode_key(b'q' * 32)}\n")
    with pytest.raises(KeyError_, match=r"master\.key line 3") as refused:
        load_keys(Settings(data_dir=tmp_path))
    assert good not in str(refused.value)


def test_the_environment_supplies_a_ring_with_other_master_keys(tmp_path: Path) -> None:
    master, older, newer = strong(), strong(), strong()
    others = f"{older.get_secret_value()}, {newer.get_secret_value()},{master.get_secret_value()}"
    keys = load_keys(
        Settings(
            data_dir=tmp_path / "data",
            jwt_key=strong(),
            index_key=strong(),
            master_key=master,
            other_master_keys=SecretStr(others),
        )
    )
    # SHOPVAULT_MASTER_KEY wraps (the newest); the others only open; a repeat counts once.
    assert [encode_key(key) for key in keys.master_ring.keys] == [
        older.get_secret_value(),
        newer.get_secret_value(),
        master.get_secret_value(),
    ]
    assert not (tmp_path / "data").exists()


def test_other_master_keys_are_checked_and_need_a_configured_master_key(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path, "jwt_key": strong(), "index_key": strong()}
    weak = SecretStr(f"{strong().get_secret_value()},{encode_key(b'ab' * 16)}")
    with pytest.raises(KeyError_, match="SHOPVAULT_OTHER_MASTER_KEYS does not look random"):
        load_keys(Settings(**base, master_key=strong(), other_master_keys=weak))
    with pytest.raises(KeyError_, match="SHOPVAULT_OTHER_MASTER_KEYS needs SHOPVAULT_MASTER_KEY"):
        load_keys(Settings(**base, other_master_keys=strong()))
    shared = strong()
    with pytest.raises(KeyError_, match="must be different"):
        load_keys(
            Settings(
                data_dir=tmp_path,
                jwt_key=strong(),
                index_key=shared,
                master_key=strong(),
                other_master_keys=shared,
            )
        )
