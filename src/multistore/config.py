"""``multistore.toml``: which store serves which role.

A *role* is a job in the application (the seed's e-commerce layout) and fixes
the data model; the URL picks the backend::

    [roles]
    sessions = "redis://127.0.0.1:6379/0"            # key-value
    profiles = "postgresql://app@db1/shop"           # document
    catalog  = "postgresql://app@db1/shop"           # search
    orders   = "mariadb://app@db2/orders"            # relational

Roles left out keep their embedded default under the data directory
(``.multistore/`` beside the config file, or in the working directory when there
is no file). Relative paths in file URLs are taken relative to the config
file's directory, so a config means the same thing from any working directory.

Every problem in the file (bad TOML, an unknown role or key, a malformed URL,
an unknown scheme, a backend that does not serve the role's model) is one
:class:`~multistore.errors.ConfigError` whose message names the file, the key
and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from multistore.errors import ConfigError, MultistoreError
from multistore.stores import _registry
from multistore.stores._base import Store
from multistore.stores._registry import backend_class, models_for_scheme
from multistore.urls import StoreURL, is_usable_path, parse_url

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_DATA_DIR",
    "DEFAULT_FILE",
    "ROLES",
    "Config",
    "ReplicationSpec",
    "RoleSpec",
    "load_config",
]

#: Environment variable naming the config file when none is given.
CONFIG_ENV: Final = "MULTISTORE_CONFIG"
DEFAULT_FILE: Final = "multistore.toml"
DEFAULT_DATA_DIR: Final = ".multistore"

#: role -> (data model, embedded default URL relative to the data directory, what it holds)
ROLES: Final[Mapping[str, tuple[str, str, str]]] = {
    "sessions": ("kv", "sqlite:///sessions.db", "user sessions, rate limits, leaderboards"),
    "profiles": ("document", "sqlite:///profiles.db", "user profiles of varying shape"),
    "catalog": ("search", "tantivy:///catalog", "product catalog search"),
    "orders": ("relational", "sqlite:///orders.db", "orders, payments, inventory"),
    "social": ("graph", "ladybug:///social.lbdb", "social graph and recommendations"),
    "metrics": ("timeseries", "duckdb:///metrics.duckdb", "application metrics"),
    "readings": ("widecolumn", "sqlite:///readings.db", "IoT sensor readings"),
    "idempotency": ("kv", "sqlite:///idempotency.db", "idempotency keys (consistency log)"),
    "sagas": ("relational", "sqlite:///sagas.db", "saga execution log (consistency log)"),
    "transactions": (
        "relational",
        "sqlite:///transactions.db",
        "two-phase commit decision log (consistency log)",
    ),
}

_TOP_LEVEL_KEYS: Final = frozenset({"roles", "multistore", "participants", "replication"})
_SETTINGS_KEYS: Final = frozenset({"data_dir", "leases"})


@dataclass(frozen=True)
class RoleSpec:
    """One role's resolved store."""

    role: str
    model: str
    url: StoreURL
    source: str
    """Where the URL came from: ``default`` or ``FILE: roles.NAME``."""

    @property
    def is_default(self) -> bool:
        return self.source == "default"


_STRATEGIES: Final = ("lww", "merge_carts", "siblings")


@dataclass(frozen=True)
class ReplicationSpec:
    """``[replication.router]``, ``[replication.multimaster]``, ``[replication.quorum]``."""

    router_primary: StoreURL | None = None
    router_replicas: tuple[StoreURL, ...] = ()
    multimaster_nodes: Mapping[str, StoreURL] = dataclasses.field(default_factory=dict)
    multimaster_strategy: str = "lww"
    quorum: StoreURL | None = None


@dataclass(frozen=True)
class Config:
    """The resolved configuration: one :class:`RoleSpec` for every role."""

    path: Path | None
    data_dir: Path
    roles: Mapping[str, RoleSpec]
    participants: Mapping[str, StoreURL] = dataclasses.field(default_factory=dict)
    """Two-phase commit participants by name (``[participants]``), for recovery."""
    replication: ReplicationSpec | None = None
    """Replication topologies to report in ``multistore status`` (``[replication]``)."""
    leases: StoreURL | None = None
    """``multistore.leases``: the etcd cluster whose leases outbox relays and saga
    workers hold (``etcd://h1:2379,h2:2379/?prefix=/shop/&ttl=10``), or None."""

    def role(self, name: str) -> RoleSpec:
        try:
            return self.roles[name]
        except KeyError:
            raise ConfigError(_unknown_role_message(name, None)) from None

    async def open(self, role: str) -> Store:
        """Open the store that serves ``role`` (as the role's data model)."""
        spec = self.role(role)
        self.make_folder(role)
        cls = backend_class(spec.model, spec.url.scheme)
        return await cls.open(spec.url)

    def make_folder(self, role: str) -> None:
        """Create the folder that holds ``role``'s files (embedded stores only).

        A folder that cannot be created (a file in the way, no permission) is a
        :class:`ConfigError` naming the key that chose it: ``multistore.data_dir`` for
        a role on its default, else ``roles.NAME``."""
        folder = self._folder(role)
        if folder is None:
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                reason = "a file of that name is in the way"
            elif isinstance(exc, NotADirectoryError):
                reason = "part of the path is a file, not a folder"
            else:
                reason = exc.strerror or type(exc).__name__
            raise self._folder_error(role, folder, reason) from None

    def check_folder(self, role: str) -> None:
        """Raise the :class:`ConfigError` :meth:`make_folder` would, creating nothing:
        for ``multistore status``, which only looks."""
        folder = self._folder(role)
        if folder is None:
            return
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing == folder and not folder.is_dir():
            raise self._folder_error(role, folder, "a file of that name is in the way")
        if not existing.is_dir():
            raise self._folder_error(role, folder, "part of the path is a file, not a folder")
        if existing != folder and not os.access(existing, os.W_OK | os.X_OK):
            raise self._folder_error(role, folder, f"no permission to create it in {existing}")

    def _folder(self, role: str) -> Path | None:
        spec = self.role(role)
        if not spec.url.is_file or spec.url.path == ":memory:":
            return None
        return Path(spec.url.path).parent

    def _folder_error(self, role: str, folder: Path, reason: str) -> ConfigError:
        spec = self.role(role)
        where = str(self.path) if self.path is not None else "defaults"
        if spec.is_default:
            key = f"multistore.data_dir ({self.data_dir})"
        else:
            key = f"{spec.source.rpartition(': ')[2]} ({spec.url})"
        return ConfigError(
            f"{where}: {key}: cannot create the folder {folder}: {reason}; "
            "choose a folder that can be created"
        )


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Load the config from ``path``, else ``$MULTISTORE_CONFIG``, else ``./multistore.toml``
    if it exists, else the embedded defaults under ``./.multistore/``."""
    environ = os.environ if env is None else env
    chosen: Path | None
    if path is not None:
        chosen = Path(path)
        _check_file(chosen, "", "drop --config")
    elif environ.get(CONFIG_ENV):
        chosen = Path(environ[CONFIG_ENV])
        _check_file(chosen, f" (from ${CONFIG_ENV})", f"unset {CONFIG_ENV}")
    else:
        candidate = Path.cwd() / DEFAULT_FILE
        chosen = candidate if candidate.is_file() else None
    if chosen is None:
        return _build(None, Path.cwd(), {}, {})
    return _load_file(chosen.resolve())


def _check_file(path: Path, origin: str, or_else: str) -> None:
    """A named config file must be a file: a folder or a missing path is one line."""
    if path.is_dir():
        inside = path / DEFAULT_FILE
        hint = (
            f"did you mean {inside}?" if inside.is_file() else f"give the path of a {DEFAULT_FILE}"
        )
        raise ConfigError(f"config file {path}{origin} is a folder, not a file; {hint}")
    if not path.is_file():
        raise ConfigError(
            f"config file {path}{origin} does not exist; create it (multistore init) or {or_else}"
        )


def _load_file(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, sorted(_TOP_LEVEL_KEYS), n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise ConfigError(
                f"{path}: unknown section [{key}]; {hint}the file has [multistore], [roles], "
                "[participants] and [replication]"
            )
    roles = data.get("roles", {})
    settings = data.get("multistore", {})
    if not isinstance(roles, dict):
        raise ConfigError(f"{path}: 'roles' must be a table, e.g. [roles] sessions = \"…\"")
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: 'multistore' must be a table")
    for key in settings:
        if key not in _SETTINGS_KEYS:
            raise ConfigError(
                f"{path}: unknown key multistore.{key}; known: {', '.join(sorted(_SETTINGS_KEYS))}"
            )
    config = _build(path, path.parent, roles, settings)
    participants = data.get("participants", {})
    if not isinstance(participants, dict):
        raise ConfigError(f"{path}: 'participants' must be a table of name = URL")
    parsed: dict[str, StoreURL] = {}
    for name, value in participants.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: participants.{name} must be a URL string")
        try:
            parsed[name] = _anchor(parse_url(value), path.parent)
        except MultistoreError as exc:
            raise ConfigError(f"{path}: participants.{name}: {exc}") from None
    replication = _replication(path, data.get("replication"))
    return dataclasses.replace(config, participants=parsed, replication=replication)


def _url_at(path: Path, key: str, value: object) -> StoreURL:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key} must be a URL string")
    try:
        return _anchor(parse_url(value), path.parent)
    except MultistoreError as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None


def _replication(path: Path, section: object) -> ReplicationSpec | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'replication' must be a table")
    spec = ReplicationSpec()
    for key, value in section.items():
        if key not in ("router", "multimaster", "quorum") or not isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown or malformed [replication.{key}]; "
                "use [replication.router], [replication.multimaster] or [replication.quorum]"
            )
    router = section.get("router")
    if router is not None:
        unknown = set(router) - {"primary", "replicas"}
        if unknown or "primary" not in router:
            raise ConfigError(
                f"{path}: [replication.router] takes primary = URL and replicas = [URL, …]"
            )
        replicas = router.get("replicas", [])
        if not isinstance(replicas, list):
            raise ConfigError(f"{path}: replication.router.replicas must be a list of URLs")
        spec = dataclasses.replace(
            spec,
            router_primary=_url_at(path, "replication.router.primary", router["primary"]),
            router_replicas=tuple(
                _url_at(path, f"replication.router.replicas[{i}]", u)
                for i, u in enumerate(replicas)
            ),
        )
    mm = section.get("multimaster")
    if mm is not None:
        nodes = mm.get("nodes")
        strategy = mm.get("strategy", "lww")
        if set(mm) - {"nodes", "strategy"} or not isinstance(nodes, dict) or not nodes:
            raise ConfigError(
                f"{path}: [replication.multimaster] takes nodes = {{ id = URL, … }} "
                f"and strategy = one of {', '.join(_STRATEGIES)}"
            )
        if strategy not in _STRATEGIES:
            raise ConfigError(
                f"{path}: replication.multimaster.strategy {strategy!r} is unknown; "
                f"use one of {', '.join(_STRATEGIES)}"
            )
        spec = dataclasses.replace(
            spec,
            multimaster_nodes={
                str(k): _url_at(path, f"replication.multimaster.nodes.{k}", v)
                for k, v in nodes.items()
            },
            multimaster_strategy=strategy,
        )
    quorum = section.get("quorum")
    if quorum is not None:
        if set(quorum) != {"url"}:
            raise ConfigError(f'{path}: [replication.quorum] takes url = "quorum://…"')
        url = _url_at(path, "replication.quorum.url", quorum["url"])
        if url.scheme != "quorum":
            raise ConfigError(f"{path}: replication.quorum.url must be a quorum:// URL")
        spec = dataclasses.replace(spec, quorum=url)
    return spec


def _build(
    path: Path | None,
    base: Path,
    roles: Mapping[str, object],
    settings: Mapping[str, object],
) -> Config:
    where = str(path) if path is not None else "defaults"
    data_dir_value = settings.get("data_dir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir_value, str) or not data_dir_value:
        raise ConfigError(f"{where}: multistore.data_dir must be a non-empty string path")
    if not is_usable_path(data_dir_value):
        raise ConfigError(
            f"{where}: multistore.data_dir holds a NUL character or text this system cannot "
            "use in a folder name"
        )
    data_dir = (base / data_dir_value).resolve()
    leases = _leases_url(where, settings.get("leases"))
    resolved: dict[str, RoleSpec] = {}
    for role, value in roles.items():
        if role not in ROLES:
            raise ConfigError(_unknown_role_message(role, path))
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: roles.{role} must be a URL string, e.g. "
                f'{role} = "{_example_url(ROLES[role][0])}"'
            )
        model = ROLES[role][0]
        try:
            url = parse_url(value)
        except MultistoreError as exc:
            raise ConfigError(f"{where}: roles.{role}: {exc}") from None
        _check_model(where, role, model, url)
        url = _anchor(url, base)
        resolved[role] = RoleSpec(role, model, url, f"{where}: roles.{role}")
    for role, (model, default, _) in ROLES.items():
        if role not in resolved:
            url = _anchor(parse_url(default), data_dir)
            resolved[role] = RoleSpec(role, model, url, "default")
    ordered = {role: resolved[role] for role in ROLES}
    return Config(path=path, data_dir=data_dir, roles=ordered, leases=leases)


def _leases_url(where: str, value: object) -> StoreURL | None:
    if value is None:
        return None
    example = 'leases = "etcd://h1:2379,h2:2379,h3:2379/?prefix=/shop/&ttl=10"'
    if not isinstance(value, str):
        raise ConfigError(f"{where}: multistore.leases must be an etcd URL string, e.g. {example}")
    try:
        url = parse_url(value)
    except MultistoreError as exc:
        raise ConfigError(f"{where}: multistore.leases: {exc}") from None
    if url.scheme != "etcd":
        raise ConfigError(
            f"{where}: multistore.leases needs an etcd:// URL, not {url.scheme}://; e.g. {example}"
        )
    if url.float_option("ttl", 10.0) < 1:
        raise ConfigError(f"{where}: multistore.leases: ttl must be at least 1 second")
    return url


def _check_model(where: str, role: str, model: str, url: StoreURL) -> None:
    if url.model is not None and url.model != model:
        raise ConfigError(
            f"{where}: roles.{role} is a {model} role but its URL asks for model={url.model}; "
            f"drop ?model= from the URL"
        )
    if (model, url.scheme) not in _registry.BACKENDS:
        serves = ", ".join(models_for_scheme(url.scheme)) or "no model yet"
        choices = ", ".join(f"{s}://" for (m, s) in _registry.BACKENDS if m == model)
        raise ConfigError(
            f"{where}: roles.{role} needs a {model} store, but {url.scheme}:// serves {serves}; "
            f"use one of {choices}"
        )


def _anchor(url: StoreURL, base: Path) -> StoreURL:
    """Make a relative file path absolute against ``base``."""
    if not url.is_file or url.path == ":memory:" or Path(url.path).is_absolute():
        return url
    return dataclasses.replace(url, database=str((base / url.path).resolve()))


def _unknown_role_message(role: str, path: Path | None) -> str:
    where = str(path) if path is not None else "config"
    close = difflib.get_close_matches(role, list(ROLES), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}: unknown role roles.{role}; {hint}roles are: {', '.join(ROLES)}"


def _example_url(model: str) -> str:
    for m, scheme in _registry.BACKENDS:
        if m == model:
            return f"{scheme}://…"
    return "sqlite:///data.db"
