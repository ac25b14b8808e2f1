"""What PostgreSQL cannot store: NUL characters (`text` and `jsonb` refuse them) and lone UTF-16
surrogates (JSON's "\\ud800" parses to one; it has no UTF-8 form, so the database driver refuses
it). Every entry point checks input with `unstorable_text_problem` and answers 4xx, instead of
letting the write fail with a 500."""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    if _LONE_SURROGATE.search(value):
        return "must not contain lone UTF-16 surrogates (an unpaired \\ud800-\\udfff escape)"
    return None


def unstorable_text_problem(value, *, where: str = "") -> str | None:
    """The first string (or object key) in `value` that cannot be stored, described with its
    place ("metadata.source"), or None. Walks dicts, lists and tuples."""
    if isinstance(value, str):
        problem = text_problem(value)
        return f"{where}: {problem}" if problem and where else problem
    if isinstance(value, dict):
        for key, item in value.items():
            place = f"{where}.{key}" if where else str(key)
            problem = text_problem(key) if isinstance(key, str) else None
            if problem:
                return f"{where or 'a key'}: {problem}"
            problem = unstorable_text_problem(item, where=place)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = unstorable_text_problem(item, where=f"{where}[{index}]")
            if problem:
                return problem
    return None
