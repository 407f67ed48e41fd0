"""multistore.toml: roles to URLs, embedded defaults, one clear error per mistake."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from multistore import ROLES, ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "multistore.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_gives_every_role_its_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.path is None
    assert set(config.roles) == set(ROLES)
    for spec in config.roles.values():
        assert spec.is_default
        assert spec.url.is_file
        assert Path(spec.url.path).is_relative_to(tmp_path / ".multistore")
    assert config.role("sessions").model == "kv"
    assert config.role("catalog").url.scheme == "tantivy"


def test_file_overrides_roles_and_keeps_defaults_for_the_rest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[roles]\nsessions = "redis://127.0.0.1:6390/2"\n'
        'catalog = "postgresql://app@db/shop"\norders = "sqlite:///orders/o.db"\n',
    )
    config = load_config(path)
    assert config.role("sessions").url.port == 6390
    assert config.role("catalog").model == "search"
    assert config.role("catalog").url.scheme == "postgresql"
    # relative file paths are anchored at the config file's folder
    assert config.role("orders").url.path == str((tmp_path / "orders" / "o.db").resolve())
    assert config.role("profiles").is_default
    assert "roles.sessions" in config.role("sessions").source


def test_env_variable_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[roles]\nsessions = "redis://h:1/0"\n')
    config = load_config(env={"MULTISTORE_CONFIG": str(path)})
    assert config.role("sessions").url.scheme == "redis"


def test_data_dir_setting(tmp_path: Path) -> None:
    path = _write(tmp_path, '[multistore]\ndata_dir = "state"\n')
    config = load_config(path)
    assert config.data_dir == (tmp_path / "state").resolve()
    assert config.role("sessions").url.path.startswith(str(tmp_path / "state"))


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[roles]\nsessions = "mongodb://h/db"\n', ["roles.sessions", "unknown scheme"]),
        ('[roles]\nsessions = "redis//h"\n', ["roles.sessions", "malformed"]),
        ('[roles]\nsesions = "redis://h/0"\n', ["unknown role roles.sesions", "'sessions'"]),
        ('[roles]\ncatalog = "redis://h/0"\n', ["roles.catalog", "search", "tantivy://"]),
        ('[roles]\nsocial = "sqlite:///g.db"\n', ["roles.social", "graph"]),
        ("[roles\n", ["not valid TOML"]),
        ("[databases]\n", ["unknown section [databases]", "[replication]"]),
        ("[replications]\n", ["did you mean [replication]?"]),
        ('[roles]\nsessions = "postgress://h/db"\n', ["did you mean postgresql://?"]),
        ('[roles]\nsessions = "redis://h/0?timout=3"\n', ["did you mean 'timeout'?"]),
        ("[roles]\nsessions = 5\n", ["roles.sessions", "URL string"]),
        ('[multistore]\ncolour = "x"\n', ["multistore.colour"]),
        ('[roles]\nprofiles = "postgresql://h/db?model=kv"\n', ["roles.profiles", "model=kv"]),
    ],
)
def test_bad_config_is_one_error_naming_file_key_and_fix(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("role", ["sessions", "catalog", "social", "metrics"])
def test_a_data_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path, role: str) -> None:
    """A file where the data directory should go: opening any embedded role is a
    ConfigError naming multistore.data_dir and the reason (it was a raw
    NotADirectoryError), and nothing is created."""
    (tmp_path / "afile").write_text("x")
    path = _write(tmp_path, '[multistore]\ndata_dir = "afile/data"\n')
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        asyncio.run(config.open(role))
    message = str(info.value)
    assert str(path) in message and "multistore.data_dir" in message
    assert "part of the path is a file" in message
    assert (tmp_path / "afile").read_text() == "x"


def test_a_role_folder_that_cannot_be_created_names_the_role(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = _write(tmp_path, '[roles]\norders = "sqlite:///afile/orders.db"\n')
    with pytest.raises(ConfigError, match=r"roles\.orders .*a file of that name is in the way"):
        asyncio.run(load_config(path).open("orders"))


def test_a_data_dir_or_file_url_with_a_nul_is_a_config_error(tmp_path: Path) -> None:
    """It was a raw ValueError ("embedded null byte") when the folder was made."""
    path = _write(tmp_path, '[multistore]\ndata_dir = "a\\u0000b"\n')
    with pytest.raises(ConfigError, match="NUL"):
        load_config(path)
    path = _write(tmp_path, '[roles]\norders = "sqlite:///a%00b.db"\n')
    with pytest.raises(ConfigError, match="NUL"):
        load_config(path)
