"""CLI fuzz: every subcommand with generated arguments and configs.

Each run of ``multistore`` (in-process, through click's test runner) must end with an
exit code of :class:`~multistore.errors.ErrorCode` — never ``unknown`` (1), which
stands for an exception nobody mapped — and, when it fails, exactly one line on
stderr of the form ``error[slug]: …``; never a traceback. Arguments are generated
within what the option types accept (what click refuses itself is click's usage
error, not ours); their content is hostile. Configs are generated TOML: hostile URLs,
unknown sections and keys, values of the wrong type, data directories that cannot
exist.
"""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from multistore.cli._app import app
from multistore.errors import ErrorCode
from tests.stores.hostile import NASTY_TEXT

#: Example counts (see the commit that sets them for the run time they add).
CONFIG_EXAMPLES = 25
COMMAND_EXAMPLES = 12

CODES = {int(code) for code in ErrorCode} - {int(ErrorCode.UNKNOWN)}
words = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=10))
URLS = [
    "sqlite:///x.db",
    "sqlite:////nonexistent-root/x.db",
    "redis://127.0.0.1:1/0",
    "redis://app:Sec/ret@127.0.0.1:1/0",
    "postgresql://u:p@127.0.0.1:1/db?timeout=1",
    "mariadb://127.0.0.1:1/db?connect_timeout=1",
    "influxdb://127.0.0.1:1/db?timeout=1",
    "falkordb://127.0.0.1:1/g",
    "tantivy:///idx",
    "ladybug:///g.lbdb",
    "duckdb:///m.duckdb",
    "quorum:///q?nodes=3&n=5",
    "mongodb://h/db",
    "sqlite://relative.db",
    "postgresql://h:99999/db",
    "redis://h/x?bogus=1",
]
urls = st.one_of(st.sampled_from(URLS), words)
toml_values = st.one_of(
    urls.map(json.dumps),
    st.sampled_from(["1", "true", "[1, 2]", "{ a = 1 }", '"\\ud800"', "1979-05-27", "nan"]),
)
ROLES = ["sessions", "profiles", "catalog", "orders", "social", "metrics", "readings", "sagas"]
keys = st.one_of(
    st.sampled_from(ROLES), st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)
)


@st.composite
def configs(draw: st.DrawFn) -> str:
    """The text of a multistore.toml, good or bad in many ways."""
    parts: list[str] = []
    if draw(st.booleans()):
        data_dir = draw(st.one_of(st.sampled_from(["data", "afile/x", "", "/proc/x/y"]), words))
        parts.append(f"[multistore]\ndata_dir = {json.dumps(data_dir)}\n")
    if draw(st.booleans()):
        roles = draw(st.dictionaries(keys, toml_values, max_size=3))
        parts.append("[roles]\n" + "".join(f"{k} = {v}\n" for k, v in roles.items()))
    if draw(st.booleans()):
        named = draw(st.dictionaries(keys, toml_values, max_size=2))
        parts.append("[participants]\n" + "".join(f"{k} = {v}\n" for k, v in named.items()))
    if draw(st.booleans()):
        parts.append(
            draw(
                st.sampled_from(
                    [
                        '[replication.router]\nprimary = "sqlite:///p.db"\nreplicas = []\n',
                        '[replication.quorum]\nurl = "sqlite:///a.db"\n',
                        "[replication.ring]\nx = 1\n",
                        "[nonsense]\n",
                        "[roles\n",
                        "roles = 3\n",
                    ]
                )
            )
        )
    return "".join(parts)


def _check(result: Any, args: list[str]) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {result.exception!r}"
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, f"{args}:\n{output}"
    code = result.exit_code
    assert code == 0 or code in CODES, f"{args}: exit {code}\n{result.stderr}"
    if code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error["), f"{args}:\n{result.stderr}"


def _invoke(args: list[str], cwd: Path) -> Any:
    with contextlib.chdir(cwd):
        return CliRunner().invoke(app, args, env={"MULTISTORE_CONFIG": "", "COLUMNS": "100"})


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@_settings(CONFIG_EXAMPLES)
@given(configs(), st.sampled_from(["status", "sagas", "recover", "demo"]), st.booleans())
def test_commands_with_generated_configs(
    tmp_path_factory: Any, config: str, command: str, as_json: bool
) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "afile").write_text("x")
    path = folder / "multistore.toml"
    if command == "demo" and "[multistore]" not in config:
        # A config that works runs the whole demo (tests/test_cli.py does that once);
        # here the demo must fail cleanly, at the latest on its data directory.
        config = '[multistore]\ndata_dir = "afile/x"\n' + config
    path.write_text(config, encoding="utf-8", errors="surrogatepass")
    args = [command, "-c", str(path)] + (["--json"] if as_json else [])
    _check(_invoke(args, folder), args)


@_settings(COMMAND_EXAMPLES)
@given(
    st.one_of(
        st.tuples(st.just("sagas"), st.sampled_from(["--state", "--id"]), words),
        st.tuples(st.just("sagas"), st.just("--limit"), st.integers(1, 2**62).map(str)),
        st.tuples(st.just("recover"), st.sampled_from(["--participant", "--sagas"]), words),
        st.tuples(st.just("recover"), st.just("--retry-for"), st.sampled_from(["0", "1e-9"])),
        st.tuples(st.just("bench"), words, st.just("--json")),
        st.tuples(st.just("sagas"), st.sampled_from(["show", "cancel"]), words),
        # Definitions that cannot import (a name that does import is run: user code).
        st.tuples(
            st.just("sagas"),
            st.just("worker"),
            st.just("--definitions"),
            st.one_of(words.map("zz_no_module_{0}:x".format), st.sampled_from(["", ":", "a:"])),
        ),
        st.tuples(st.just("quorum"), st.sampled_from(["add-node", "remove-node"]), words),
        st.tuples(
            st.just("quorum"),
            st.just("add-node"),
            st.sampled_from(["--url", "--node"]),
            st.one_of(st.sampled_from(URLS), words),
        ),
    )
)
def test_commands_with_generated_arguments(tmp_path_factory: Any, args: tuple[str, ...]) -> None:
    folder = tmp_path_factory.mktemp("args")
    config = folder / "multistore.toml"
    config.write_text('[multistore]\ndata_dir = "data"\n')
    argv = [*args, "--dir", str(folder)] if args[0] == "bench" else [*args, "-c", str(config)]
    if any("\x00" in a or "\ud800" <= a[:1] <= "\udfff" for a in argv):
        return  # an argument vector cannot hold these
    _check(_invoke(argv, folder), argv)


@_settings(COMMAND_EXAMPLES)
@given(
    st.fixed_dictionaries(
        {
            "--n": st.integers(-2, 9).map(str),
            "--m": st.integers(-2, 9).map(str),
            "--r": st.one_of(st.sampled_from(["one", "quorum", "all", "0", "99"]), words),
            "--w": st.one_of(st.sampled_from(["one", "quorum", "all", "-1"]), words),
            "--ops": st.integers(-5, 20).map(str),
            "--concurrency": st.integers(-1, 3).map(str),
            "--duration": st.sampled_from(["0", "-1", "0.05", "nan", "inf"]),
            "--keys": st.integers(-1, 3).map(str),
            "--mix": st.one_of(
                st.sampled_from(["read=1", "write=0.5,read=0.5", "x=1", "read=-1"]), words
            ),
            "--nodes": st.one_of(st.sampled_from(["embedded", "redis"]), words),
            "--faults": st.one_of(st.sampled_from(["none", "kill", "chaos"]), words),
            "--timeout": st.sampled_from(["0", "-1", "0.2", "nan"]),
            "--coordinators": st.integers(-1, 9).map(str),
        }
    ).filter(lambda o: o["--nodes"] != "redis")  # real servers: tests/lab covers them
)
def test_lab_quorum_with_generated_options(tmp_path_factory: Any, options: dict[str, str]) -> None:
    argv = ["lab", "quorum", "--json"] + [item for pair in options.items() for item in pair]
    if any("\x00" in a for a in argv):
        return
    _check(_invoke(argv, tmp_path_factory.mktemp("lab")), argv)


BENCHMARKS = [
    "def run(:\n",  # a syntax error
    "raise RuntimeError('at import')\n",
    "import not_a_module_anywhere\n",
    "def run():\n    return []\n",  # not a coroutine function
    "async def run():\n    raise ZeroDivisionError('in the benchmark')\n",
    "async def run():\n    return 3\n",
    "async def run():\n    return [{'name': 'x'}]\n",
    "async def run():\n    return [dict(name='x', metric='m', unit='s', ours=float('nan'),"
    " anchor=1.0, anchor_name='a', speedup=1.0)]\n",
    "run = 42\n",
]


@_settings(len(BENCHMARKS) * 2)
@given(st.sampled_from(BENCHMARKS), st.booleans())
def test_bench_with_broken_benchmarks(tmp_path_factory: Any, code: str, as_json: bool) -> None:
    """A benchmark whose own code fails is a BenchmarkError, never error[unknown]."""
    folder = tmp_path_factory.mktemp("benchmarks")
    (folder / "broken.py").write_text(code)
    argv = ["bench", "broken", "--dir", str(folder)] + (["--json"] if as_json else [])
    result = _invoke(argv, folder)
    _check(result, argv)
    assert result.exit_code == int(ErrorCode.BENCHMARK), result.stderr
