"""One-statement writes to a SQLite file through plain sqlite3, for worker
threads: the run path's two writes (record the run, record its end).

Over aiosqlite, SQLAlchemy hops to the connection's thread and back for each
cursor, execute, close, commit and the pool's rollback: ~0.55 ms a write, of
which sqlite3 and its fsync take ~0.14. A synchronous SQLAlchemy engine still
took ~0.19; this runs the statement SQLAlchemy compiled, cached per statement
and set of parameter names, on a connection of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.schema import ScalarElementColumnDefault

__all__ = ["SqliteWriter"]


class SqliteWriter:
    def __init__(self, path: str, on_connect: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._on_connect = on_connect
        self._dialect = SQLiteDialect_pysqlite(paramstyle="qmark")
        # (compiled, column defaults) per statement and set of parameter names
        self._compiled: dict[tuple[UpdateBase, frozenset[str]], tuple[SQLCompiler, dict[str, Any]]]
        self._compiled = {}
        self._idle: list[sqlite3.Connection] = []  # as many as threads ever wrote at once

    def write(self, statement: UpdateBase, params: dict[str, Any], sync: bool = True) -> int:
        """Execute `statement` in a transaction of its own; return its row
        count. Errors are SQLAlchemy's (IntegrityError and so on).

        With `sync=False` the commit is not fsynced: in WAL mode it still
        survives a crash of this process, and the next synced commit makes it
        durable too (the log is written in order); only an OS crash or power
        loss before then can take it back."""
        key = (statement, frozenset(params))
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = self._compile(statement, list(params))
        compiled, defaults = found
        state = compiled.construct_expanded_state({**defaults, **params})  # IN (...) as ?s
        # The expanded state holds the processors of expanded parameters only;
        # the others' (JSON, say) are the compiled statement's.
        processors: dict[str, Any] = {**compiled._bind_processors, **state.processors}
        args = []
        for name in state.positiontup or ():
            value, process = state.parameters[name], processors.get(name)
            args.append(value if process is None else process(value))
        try:
            with self.connection() as conn:
                if not sync:
                    conn.execute("PRAGMA synchronous=NORMAL")
                try:
                    with conn:  # commit, or roll back on error
                        return conn.execute(state.statement, args).rowcount
                finally:
                    if not sync:
                        conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise DBAPIError.instance(state.statement, args, exc, sqlite3.Error) from exc

    def _compile(
        self, statement: UpdateBase, keys: list[str]
    ) -> tuple[SQLCompiler, dict[str, Any]]:
        compiled = statement.compile(dialect=self._dialect, column_keys=keys)
        assert isinstance(compiled, SQLCompiler)
        # The columns left out take their defaults, as SQLAlchemy's execution
        # would give them: plain values only (all the models have).
        defaults: dict[str, Any] = {}
        for column in compiled.insert_prefetch:
            default = column.default
            if not isinstance(default, ScalarElementColumnDefault):
                raise ValueError(f"{column.key}: a value is required")
            defaults[column.key] = default.arg
        if compiled.update_prefetch:
            raise ValueError("onupdate defaults are not supported")
        return compiled, defaults

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the writer's, for one thread at a time."""
        try:
            conn = self._idle.pop()  # atomic, as is the append: no lock needed
        except IndexError:
            conn = sqlite3.connect(self._path, check_same_thread=False)
            self._on_connect(conn)
        try:
            yield conn
        finally:
            self._idle.append(conn)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
