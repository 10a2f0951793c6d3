"""Create the node's tables, or bring a database made by an older version up to them, at start.

Upgrades only add: missing tables, columns (with their defaults) and indexes,
so an older node still running beside a newer one keeps working.  The
version reached is kept in ``schema_version`` (a newer node's higher number
is left as it is).  On PostgreSQL, an advisory
lock makes processes starting at once upgrade one after the other.
"""

from __future__ import annotations

import time

from sqlalchemy import Column, Table, inspect

from scp.db_engine import Backend, Tx
from scp.db_schema import SCHEMA_VERSION, metadata, schema_version

# pg_advisory_xact_lock key: any constant the node alone uses ("CACN")
_UPGRADE_LOCK = 0x4341434E


def upgrade(backend: Backend) -> int:
    """Create or upgrade the schema; return the version the database was at (0: new or unversioned)."""
    with backend.tx() as tx:
        if backend.postgres:
            tx.execute("SELECT pg_advisory_xact_lock(:key)", {"key": _UPGRADE_LOCK})
        conn = tx.conn
        existing = set(inspect(conn).get_table_names())
        before = 0
        if schema_version.name in existing:
            before = tx.execute("SELECT MAX(version) FROM schema_version").scalar() or 0
        # checked whatever the recorded version says: a column lost to a hand-made
        # restore or an older node's table must not fail a query later
        metadata.create_all(conn, checkfirst=True)
        for table in metadata.sorted_tables:
            if table.name in existing:
                _add_missing_columns(tx, table)
            for index in table.indexes:
                index.create(conn, checkfirst=True)
        if before != SCHEMA_VERSION:
            tx.execute("DELETE FROM schema_version")
            tx.execute(
                "INSERT INTO schema_version (version, upgraded) VALUES (:v, :t)",
                {"v": max(before, SCHEMA_VERSION), "t": time.time()},
            )
        return before


def _add_missing_columns(tx: Tx, table: Table) -> None:
    have = {c["name"] for c in inspect(tx.conn).get_columns(table.name)}
    for column in table.columns:
        if column.name not in have:
            tx.execute(f"ALTER TABLE {table.name} ADD COLUMN {_definition(column, tx)}")


def _definition(column: Column, tx: Tx) -> str:
    """``name TYPE [DEFAULT x] [NOT NULL]``; a NOT NULL column added to filled tables needs its default."""
    dialect = tx.conn.dialect
    sql = f"{column.name} {column.type.compile(dialect=dialect)}"
    if column.server_default is not None:
        sql += f" DEFAULT {column.server_default.arg.text}"  # type: ignore[attr-defined]
    if not column.nullable and column.server_default is not None:
        sql += " NOT NULL"
    return sql
