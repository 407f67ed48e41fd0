"""`multistore sagas` and `multistore recover --sagas MODULE:ATTR` as an operator uses
them: a saga whose compensation kept failing is stuck; once the cause is fixed, the
command retries it with the application's saga definitions and it ends compensated."""

from __future__ import annotations

import json
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
