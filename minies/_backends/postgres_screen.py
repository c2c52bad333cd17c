"""The screen a projection's SQL passes on PostgreSQL before it runs.

It reads the statement's words (comments, quoting, comma lists, CTEs, ``MERGE``,
``set_config()``, ``DO``, ``CALL``...), not its text, and refuses what would write minies'
own tables, change the session or end the transaction. It guards against mistakes, not
against hostile code: the handle is the store's own session, so whatever that session's role
may do, code holding it can do (through a function it creates, say). What keeps the log safe
from such code is the role the store runs as (``minies grant --role app``) and ``verify``.
"""

from __future__ import annotations

import re


class Refused(Exception):
    """Never raised by psycopg: projections' statements are screened before they run."""


# A projection's statements are screened before they run. This is a guard against mistakes, not
# against hostile code: the handle is the store's own session, so whatever that session's role
# may do, code holding it can do (through a function it creates, say). What keeps the log safe
# from such code is the role the store runs as (``minies grant --role app``: it cannot change or
# empty the log) and ``verify`` (which reports what an owner's credentials did to the guards).
_WORDS = re.compile(
    r"""'(?:[^']|'')*'|[eE]'(?:[^'\\]|\\.|'')*'|\$(\w*)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/"""
    r"""|"((?:[^"]|"")*)"|([A-Za-z_][\w$]*)|(;)|(,)|(\.)|(\()""",
    re.DOTALL,
)
# Statements that end or change the append's transaction or the session, or act outside it.
_CONTROL = frozenset(
    {
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "prepare",
        "set",
        "reset",
        "discard",
        "listen",
        "unlisten",
        "notify",
        "vacuum",
        "analyze",
        "cluster",
        "checkpoint",
        "copy",
        "do",
        "call",
        "lock",
        "load",
        "grant",
        "revoke",
        "security",
        "reassign",
        "import",
    }
)
_WRITES = frozenset(
    {
        "insert",
        "update",
        "delete",
        "merge",
        "truncate",
        "drop",
        "alter",
        "create",
        "comment",
        "refresh",
        "reindex",
    }
)
# The words after which a table's name comes (a list of them, after TRUNCATE or DROP ... ).
_TABLE_BEFORE = frozenset(
    {
        "from",
        "into",
        "update",
        "join",
        "table",
        "only",
        "exists",
        "on",
        "truncate",
        "using",
        "view",
        "index",
        "to",
    }
)
_FORBIDDEN_CALLS = frozenset({"set_config", "pg_terminate_backend", "pg_cancel_backend", "dblink", "dblink_exec"})


def why_refused(statement: str) -> str | None:
    """Why a projection may not run ``statement``; None if it may."""
    words: list[str] = []
    several = False
    for found in _WORDS.finditer(statement):
        quoted, word, semicolon = found.group(2), found.group(3), found.group(4)
        if semicolon:
            several = several or bool(statement[found.end() :].strip())
        elif quoted is not None:
            words.append(quoted.replace('""', '"'))
        elif word is not None:
            words.append(word.lower())
        elif found.group(5) or found.group(6) or found.group(7):
            words.append(found.group(0))
    if several:
        return "it holds several statements (a projection runs one at a time)"
    if not words:
        return None
    if words[0] in _CONTROL or words[:2] == ["alter", "system"]:
        return "it would end or change the append's transaction or the session"
    called = [w for i, w in enumerate(words[:-1]) if words[i + 1] == "(" and w in _FORBIDDEN_CALLS]
    if called:
        return f"it calls {called[0]}() (a session setting, or another session)"
    if _WRITES.isdisjoint(words):
        return None
    for i, word in enumerate(words):
        if word in _TABLE_BEFORE or (word == "," and i and _listing(words, i)):
            name = _name_at(words, i + 1)
            if name == "events" or name.startswith("minies_"):
                return f"it writes or changes the log or minies' own tables ({name})"
    return None


def _listing(words: list[str], comma: int) -> bool:
    """Whether the comma at ``comma`` continues a list of tables (TRUNCATE a, b / DROP TABLE a, b)."""
    for word in reversed(words[:comma]):
        if word in ("(", "set", "select", "values", "returning", "where"):
            return False
        if word in ("truncate", "table", "view", "index", "exists", "only", "sequence"):
            return True
    return False


def _name_at(words: list[str], i: int) -> str:
    """The relation named from ``words[i]`` (its last part, after a schema and a dot)."""
    while i < len(words) and words[i] in ("only", "table", "if", "exists", "not", "lateral"):
        i += 1
    if i >= len(words):
        return ""
    while i + 2 < len(words) and words[i + 1] == ".":
        i += 2
    return words[i]
