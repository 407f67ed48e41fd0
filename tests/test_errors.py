"""The error tree: codes are stable and unique, outcomes are part of the type."""

from __future__ import annotations

import inspect

import multistore.errors as errors
from multistore.errors import ErrorCode, MultistoreError, Outcome


def _error_classes() -> list[type[MultistoreError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, MultistoreError)
    ]


def test_every_error_class_has_its_own_code() -> None:
    classes = _error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), "two error classes share a code"


def test_every_class_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in _error_classes():
        assert cls.__name__ in doc, f"{cls.__name__} missing from the tree in errors.py"


def test_codes_are_stable_exit_codes() -> None:
    # These numbers are a public contract (CLI exit codes); changing one is a breaking change.
    assert ErrorCode.CONFIG == 10
    assert ErrorCode.INVALID_URL == 11
    assert ErrorCode.INVALID_QUERY == 21
    assert ErrorCode.NOT_FOUND == 30
    assert ErrorCode.STORE_UNAVAILABLE == 51
    assert all(0 < code < 126 for code in ErrorCode)


def test_store_errors_are_indeterminate_by_default_and_usage_errors_definite() -> None:
    assert errors.StoreTimeoutError("x").outcome is Outcome.INDETERMINATE
    assert not errors.StoreUnavailableError("x").definite
    assert errors.InvalidQueryError("x").definite
    refused = errors.StoreUnavailableError("refused", outcome=Outcome.DEFINITE)
    assert refused.definite


def test_problem_json_body() -> None:
    body = errors.DuplicateKeyError("id 7 exists").to_problem()
    assert body["code"] == 41
    assert body["type"] == "urn:multistore:error:duplicate-key"
    assert body["detail"] == "id 7 exists"
    assert body["outcome"] == "definite"


def test_no_builtin_is_shadowed() -> None:
    import builtins

    for cls in _error_classes():
        assert not hasattr(builtins, cls.__name__)


def test_every_code_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    for code in ErrorCode:
        assert f"| {int(code)} | {code.slug} |" in doc, f"{code.name} missing from docs/errors.md"
