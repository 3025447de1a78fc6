"""One-statement writes to a SQLite file through plain sqlite3, for worker
threads: the run path's two writes (record the run, record its end).

Over aiosqlite, SQLAlchemy hops to the connection's thread and back for each
cursor, execute, close, commit and the pool's rollback: ~0.55 ms a write, of
which sqlite3 and its fsync take ~0.14. A synchronous SQLAlchemy engine still
took ~0.19; this runs the statement SQLAlchemy compiled, cached per statement
and set of parameter names, on a connection of its own.

The writes of this process take turns on one lock. SQLite has one writer at
a time anyway, but a writer that finds it busy sleeps in a back-off of up
to 100 ms and may find it busy again: behind a stream of other writes (a
hundred VM deletes) one run's write was seen to wait 2 s. A lock hands the
turn over as soon as it is free.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.schema import ScalarElementColumnDefault

__all__ = ["SqliteWriter"]

T = TypeVar("T")


class SqliteWriter:
    def __init__(self, path: str, on_connect: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._on_connect = on_connect
        self._dialect = SQLiteDialect_pysqlite(paramstyle="qmark")
        # (compiled, column defaults) per statement and set of parameter names
        self._compiled: dict[tuple[UpdateBase, frozenset[str]], tuple[SQLCompiler, dict[str, Any]]]
        self._compiled = {}
        self._idle: list[sqlite3.Connection] = []  # as many as threads ever wrote at once
        self._turn = threading.Lock()  # this process's writes, one at a time

    def write(self, statement: UpdateBase, params: dict[str, Any], sync: bool = True) -> int:
        """Execute `statement` in a transaction of its own; return its row
        count. Errors are SQLAlchemy's (IntegrityError and so on).

        With `sync=False` the commit is not fsynced: in WAL mode it still
        survives a crash of this process, and the next synced commit makes it
        durable too (the log is written in order); only an OS crash or power
        loss before then can take it back."""
        return self.write_all([(statement, params)], sync)[0]

    def write_all(
        self, steps: Sequence[tuple[UpdateBase, dict[str, Any]]], sync: bool = True
    ) -> list[int]:
        """`write` for several statements, in one transaction; their row counts."""
        prepared = [self._prepare(statement, params) for statement, params in steps]
        sql: str = ""
        args: list[Any] = []
        try:
            with self._turn, self.connection() as conn:
                if not sync:
                    conn.execute("PRAGMA synchronous=NORMAL")
                try:
                    with conn:  # commit, or roll back on error
                        counts = []
                        for sql, args in prepared:
                            counts.append(conn.execute(sql, args).rowcount)
                        return counts
                finally:
                    if not sync:
                        conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc

    def in_turn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` on a connection of the writer's, in this process's turn of
        writing (a checkpoint, which holds up writers while it runs)."""
        with self._turn, self.connection() as conn:
            return fn(conn)

    def _prepare(self, statement: UpdateBase, params: dict[str, Any]) -> tuple[str, list[Any]]:
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
        return state.statement, args

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
