"""Named parameters (store.sql): the composed statements count no placeholders by hand."""

from __future__ import annotations

import pytest

from mfa_service.store import verifications
from mfa_service.store.sql import named


def test_names_are_numbered_in_order_of_first_use_and_reused() -> None:
    statement = named("SELECT :b, :a::text, :b + 1, x::int FROM t WHERE y = :a")
    assert statement.text == "SELECT $1, $2::text, $1 + 1, x::int FROM t WHERE y = $2"
    assert statement.names == ("b", "a")
    assert statement.args({"a": "A", "b": 2, "unused": None}) == [2, "A"]


def test_string_literals_and_casts_are_not_parameters() -> None:
    statement = named("SELECT to_char(:now, 'HH24:MI:SS'), ':not', a::uuid FROM t")
    assert statement.text == "SELECT to_char($1, 'HH24:MI:SS'), ':not', a::uuid FROM t"
    assert statement.names == ("now",)


def test_a_missing_value_is_an_error_not_a_shifted_parameter() -> None:
    with pytest.raises(ValueError, match=":user"):
        named("SELECT :env, :user").args({"env": "e"})


def test_every_conclusion_statement_names_its_parameters() -> None:
    """Every variant of the concluding statement (device write x grant) is made at import
    and numbers each name once: no ``:name`` is left in the text, none is numbered twice."""
    assert len(verifications._CONCLUDE_STATEMENTS) == 9
    for statement in verifications._CONCLUDE_STATEMENTS.values():
        assert len(set(statement.names)) == len(statement.names)
        assert f"${len(statement.names)}" in statement.text
        assert f"${len(statement.names) + 1}" not in statement.text
        assert " :" not in statement.text.replace("::", "")
