"""Helpers of the slip catalogue (tests/test_slips_*.py): a slip must get its own hint, first; a correct answer ✅."""
from __future__ import annotations

import pytest


def first_line_of_failure(check, fn, capsys) -> str:
    """The first line of the ❌ raised by ``check(fn)``, after asserting nothing ✅ or ⚠️ was printed before it."""
    with pytest.raises(AssertionError) as info:
        check(fn)
    printed = capsys.readouterr().out
    assert "✅" not in printed and "⚠️" not in printed, f"printed before the ❌: {printed}"
    message = str(info.value)
    assert message.startswith("❌"), message
    return message.split("\n")[0]


def assert_named(check, fn, hint: str, capsys) -> None:
    """``check(fn)`` fails and its first line, the hint, contains ``hint``."""
    line = first_line_of_failure(check, fn, capsys)
    assert hint in line, f"expected {hint!r} in the first line:\n{line}"


def assert_passes(check, fn, capsys) -> None:
    """``check(fn)`` passes, having compared values: one ✅ line and no ⚠️."""
    result = check(fn)
    printed = capsys.readouterr().out
    assert result.passed and "✅" in printed and "⚠️" not in printed, printed
