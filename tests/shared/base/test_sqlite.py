"""The one SQLite opener of the three stores, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.base.sqlite import open_store, transaction

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES t(id));"


def test_pragmas_follow_the_durability_asked_for(tmp_path: Path) -> None:
    full = open_store(tmp_path / "full.sqlite3", SCHEMA, what="outbox", synchronous="FULL", foreign_keys=True)
    normal = open_store(tmp_path / "normal.sqlite3", SCHEMA, what="store")
    assert full.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [db.execute("PRAGMA synchronous").fetchone()[0] for db in (full, normal)] == [2, 1]  # FULL, NORMAL
    assert [db.execute("PRAGMA foreign_keys").fetchone()[0] for db in (full, normal)] == [1, 0]
    # Autocommit: what one connection wrote, another sees without a commit call.
    full.execute("INSERT INTO t (id) VALUES (1)")
    other = open_store(tmp_path / "full.sqlite3", SCHEMA, what="outbox")
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    for db in (full, normal, other):
        db.close()


def test_a_missing_folder_or_a_foreign_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="outbox folder .* does not exist"):
        open_store(tmp_path / "nowhere" / "o.sqlite3", SCHEMA, what="outbox")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, just bytes " * 100)
    with pytest.raises(ConfigError, match="fleet store .*garbage.sqlite3 is unusable"):
        open_store(garbage, SCHEMA, what="fleet store")
    assert open_store(":memory:", SCHEMA, what="store").execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_a_transaction_commits_all_or_nothing(tmp_path: Path) -> None:
    db = open_store(tmp_path / "t.sqlite3", "CREATE TABLE t (x INTEGER PRIMARY KEY);", what="test store")
    with transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(Exception, match="UNIQUE"), transaction(db, "BEGIN IMMEDIATE"):
        db.execute("INSERT INTO t VALUES (3)")
        db.execute("INSERT INTO t VALUES (1)")  # refused: the 3 goes with it
    assert [row[0] for row in db.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    assert not db.in_transaction
    db.close()
