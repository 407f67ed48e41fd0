"""`multistore sagas` and `multistore recover --sagas MODULE:ATTR` as an operator uses
them: a saga whose compensation kept failing is stuck; once the cause is fixed, the
command retries it with the application's saga definitions and it ends compensated."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

from tests.cli import run_python

SAGAS_MODULE = textwrap.dedent(
    """
    from pathlib import Path

    from multistore.consistency import RetryPolicy, Saga, Step, StepContext
    from multistore.errors import StoreUnavailableError

    HERE = Path(__file__).parent


    async def charge(ctx: StepContext) -> str:
        return "ch_1"


    async def refund(ctx: StepContext) -> None:
        if (HERE / "payments-down").exists():
            raise StoreUnavailableError("payments: connection refused")
        with (HERE / "refunds.txt").open("a") as f:
            f.write(ctx.idempotency_key + "\\n")


    async def reserve(ctx: StepContext) -> None:
        raise RuntimeError("out of stock")


    SAGAS = [
        Saga(
            "order",
            [
                Step(
                    "charge",
                    charge,
                    compensate=refund,
                    compensation_retry=RetryPolicy(
                        max_attempts=2, initial_delay=0.01, jitter=0, retry_on=(Exception,)
                    ),
                ),
                Step("reserve", reserve),
            ],
        )
    ]
    """
)

START = textwrap.dedent(
    """
    import asyncio

    from multistore import load_config
    from multistore.consistency import SagaEngine
    from opsagas import SAGAS


    async def main() -> None:
        store = await load_config().open("sagas")
        engine = SagaEngine(store, SAGAS)
        try:
            result = await engine.start(SAGAS[0], None, saga_id="order-7")
            print(result.state.value)
        finally:
            await engine.close()
            await store.close()


    asyncio.run(main())
    """
)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_python(args, cwd=cwd, env={"PYTHONPATH": str(cwd)}, timeout=120)


def test_stuck_saga_is_listed_then_retried_by_the_recover_command(tmp_path: Path) -> None:
    (tmp_path / "opsagas.py").write_text(SAGAS_MODULE)
    (tmp_path / "start.py").write_text(START)
    (tmp_path / "payments-down").touch()
    started = _run(["start.py"], tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "stuck"

    listed = _run(["-m", "multistore", "sagas", "--state", "stuck", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [s["saga_id"] for s in json.loads(listed.stdout)["sagas"]] == ["order-7"]

    # without the definitions the command can only list it
    plain = _run(["-m", "multistore", "recover", "--json"], tmp_path)
    assert plain.returncode == 0, plain.stderr
    report = json.loads(plain.stdout)
    assert [s["saga_id"] for s in report["stuck_sagas"]] == ["order-7"]
    assert report["retried_sagas"] == []

    (tmp_path / "payments-down").unlink()  # the operator fixed the payment service
    fixed = _run(["-m", "multistore", "recover", "--sagas", "opsagas:SAGAS", "--json"], tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    retried = json.loads(fixed.stdout)["retried_sagas"]
    assert retried == [{"saga_id": "order-7", "name": "order", "state": "compensated"}]
    assert (tmp_path / "refunds.txt").read_text().split() == ["order-7:charge"]

    shown = _run(["-m", "multistore", "sagas", "--id", "order-7", "--json"], tmp_path)
    assert json.loads(shown.stdout)["saga"]["state"] == "compensated"


def test_recover_with_a_bad_sagas_spec_names_the_problem(tmp_path: Path) -> None:
    result = _run(["-m", "multistore", "recover", "--sagas", "nosuchmodule:X"], tmp_path)
    assert result.returncode == 20
    assert "cannot import 'nosuchmodule'" in result.stderr


ENQUEUE_CHANGED = textwrap.dedent(
    """
    import asyncio

    from multistore import load_config
    from multistore.consistency import Saga, SagaEngine, Step, StepContext
    from opsagas import SAGAS


    async def noop(ctx: StepContext) -> None:
        return None


    # the same saga name and version with other steps: runs logged by SAGAS[0] cannot
    # be resumed by it
    CHANGED = Saga("order", [Step("charge", noop), Step("ship", noop)])


    async def main() -> None:
        store = await load_config().open("sagas")
        try:
            async with SagaEngine(store, SAGAS) as old:
                await old.enqueue(SAGAS[0], None, saga_id="order-8")
            async with SagaEngine(store, [CHANGED]) as new:
                print([r.blocked is not None for r in await new.recover()])
        finally:
            await store.close()


    asyncio.run(main())
    """
)


def test_the_sagas_command_reads_as_text_at_80_columns(tmp_path: Path) -> None:
    (tmp_path / "opsagas.py").write_text(SAGAS_MODULE)
    (tmp_path / "start.py").write_text(START)
    (tmp_path / "changed.py").write_text(ENQUEUE_CHANGED)
    (tmp_path / "payments-down").touch()
    env = {"PYTHONPATH": str(tmp_path), "COLUMNS": "80"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_python(["-m", "multistore", *args], cwd=tmp_path, env=env, timeout=120)

    empty = cli("sagas")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.startswith("no sagas in sqlite:///")
    assert _run(["start.py"], tmp_path).stdout.strip() == "stuck"
    changed = _run(["changed.py"], tmp_path)
    assert changed.stdout.strip() == "[True]", changed.stderr

    listed = cli("sagas")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines[1:])  # the first names the log's URL
    stuck = next(line for line in lines if "order-7" in line)
    assert "order v1" in stuck and "stuck" in stuck
    # one line per saga: its age, and its error as "Type: message" (cut to fit)
    assert re.search(r"\b\d+ s ago\b", stuck)
    assert "StoreUnavailableError: paym" in stuck
    assert not re.search(r"\d{10}\.\d", listed.stdout)  # no Unix seconds
    assert '{"type"' not in listed.stdout  # no JSON
    # the saga that no worker could run says so, and why
    blocked = next(line for line in lines if "order-8" in line)
    assert "pending" in blocked and "blocked: ConflictError" in blocked

    data = json.loads(cli("sagas", "--json").stdout)["sagas"]
    by_id = {s["saga_id"]: s for s in data}
    assert by_id["order-7"]["error"] == {"type": "RuntimeError", "message": "out of stock"}
    assert by_id["order-7"]["compensation_error"]["type"] == "StoreUnavailableError"

    shown = cli("sagas", "show", "order-7")
    assert shown.returncode == 0, shown.stderr
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
    assert '{"type"' not in shown.stdout
    text = " ".join(shown.stdout.split())
    assert "order-7 order v1: stuck" in text
    assert re.search(r"updated: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+ s ago\)", text)
    assert "error: RuntimeError: out of stock" in text
    assert "reserve failed: RuntimeError: out of stock" in text
    assert "charge's compensation failed: StoreUnavailableError: payments: connection" in text
    assert re.search(r"│ charge +│ completed +│ 1 +│ 2 +│ \"ch_1\"", shown.stdout)
    shown_json = json.loads(cli("sagas", "show", "order-7", "--json").stdout)["saga"]
    assert [s["output"] for s in shown_json["steps"]] == ["ch_1", None]

    reason = " ".join(cli("sagas", "show", "order-8").stdout.split())
    assert "order-8 order v1: pending, blocked" in reason
    assert "cannot run because: ConflictError: saga 'order-8' was logged with steps" in reason

    for args in (("sagas", "show", "order-9"), ("sagas", "--id", "order-9")):
        missing = cli(*args)
        assert missing.returncode == 30
        assert "no saga with id 'order-9' in sqlite:///" in missing.stderr
    none = cli("sagas", "--state", "completed")
    assert none.returncode == 0
    assert none.stdout.startswith("no sagas in state completed in sqlite:///")


def test_an_operator_cancels_a_stuck_saga_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "opsagas.py").write_text(SAGAS_MODULE)
    (tmp_path / "start.py").write_text(START)
    (tmp_path / "payments-down").touch()
    assert _run(["start.py"], tmp_path).stdout.strip() == "stuck"

    cancel = ["-m", "multistore", "sagas", "cancel", "order-7", "--reason", "refunded by hand"]
    done = _run(cancel, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "saga order-7 is cancelled" in done.stdout
    assert "cancelled by an operator: refunded by hand" in done.stdout

    again = _run(cancel, tmp_path)  # only a stuck saga can be cancelled
    assert again.returncode != 0
    assert again.stderr.count("\n") == 1 and "is cancelled, not stuck" in again.stderr
    (tmp_path / "payments-down").unlink()
    retried = _run(["-m", "multistore", "recover", "--sagas", "opsagas:SAGAS", "--json"], tmp_path)
    assert json.loads(retried.stdout)["retried_sagas"] == []  # nothing runs it again
    assert not (tmp_path / "refunds.txt").exists()
    shown = _run(["-m", "multistore", "sagas", "show", "order-7", "--json"], tmp_path)
    assert json.loads(shown.stdout)["saga"]["state"] == "cancelled"
