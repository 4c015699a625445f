"""Statements with named parameters.

A statement is written with ``:name`` where a value goes (``:now::timestamptz`` casts
it); ``named`` numbers the names in order of first use, as asyncpg's ``$n`` wants, and
``Statement.args`` lays out the values by name. A statement composed of fragments from
several modules (``store.verifications``) so never counts placeholders by hand, and a
value missing is an error, not a shifted parameter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ``:name`` not preceded by ``:`` or a word character, so ``::cast`` and ``a:b`` stay.
_NAME = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class Statement:
    text: str  # with $1, $2, ... in place of the names
    names: tuple[str, ...]  # the name of $1, $2, ...

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``text``, each name's value from ``values``
        (which may hold more: a composed statement may leave a fragment out)."""
        try:
            return [values[name] for name in self.names]
        except KeyError as missing:
            raise ValueError(f"no value for the statement's parameter :{missing.args[0]}") from None


@functools.cache
def named(text: str) -> Statement:
    """``text`` with ``$n`` for each ``:name`` (string literals are left alone)."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match[1], len(names) + 1)}"

    # Between single quotes (even pieces are outside): '...:MI:SS...' is not a parameter.
    pieces = text.split("'")
    pieces[::2] = [_NAME.sub(number, piece) for piece in pieces[::2]]
    return Statement("'".join(pieces), tuple(names))
