"""The hub's SQL schema (SQLAlchemy 2 declarative tables), its version and migrations, and the
SQLite connection settings. ``Store`` (:mod:`fedssl.hub.store`) is the only user.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "SCHEMA_VERSION",
    "ROLES",
    "STATUSES",
    "MIGRATIONS",
    "Base",
    "SchemaRow",
    "KeyRow",
    "ModelRow",
    "VersionRow",
    "ContributionRow",
    "now",
    "sqlite_pragmas",
]

#: bump with a migration in :data:`MIGRATIONS` when a table changes
SCHEMA_VERSION = 3


ROLES = ("manager", "participant")


STATUSES = ("pending", "merged", "stale", "rejected")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaRow(Base):
    __tablename__ = "hub_schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class KeyRow(Base):
    __tablename__ = "hub_api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(128))  # the manager these rights belong to
    participant: Mapped[str] = mapped_column(String(128))  # the name contributions are filed under
    issued_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ModelRow(Base):
    __tablename__ = "hub_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(128))
    architecture: Mapped[str] = mapped_column(Text)
    recipe: Mapped[str] = mapped_column(Text)
    max_staleness: Mapped[int] = mapped_column(Integer, default=0)
    max_upload_bytes: Mapped[int] = mapped_column(BigInteger)
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class VersionRow(Base):
    __tablename__ = "hub_versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("hub_models.id"))
    number: Mapped[int] = mapped_column(Integer)
    # blobs load only when read (metadata queries never touch them)
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    weights_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # schema 2
    weights_sha256: Mapped[str] = mapped_column(String(64))
    # schema 3: set when the bytes are a blob file of this SHA-256 (``weights`` then empty)
    weights_ref: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    parent: Mapped[int] = mapped_column(Integer, default=0)
    merge_method: Mapped[str] = mapped_column(String(64), default="")
    contribution_ids: Mapped[str] = mapped_column(Text, default="[]")
    num_examples: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class ContributionRow(Base):
    __tablename__ = "hub_contributions"
    __table_args__ = (UniqueConstraint("model_id", "base_version", "participant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("hub_models.id"))
    participant: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(40))
    base_version: Mapped[int] = mapped_column(Integer)
    num_examples: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[str] = mapped_column(Text, default="{}")
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    weights_bytes: Mapped[int] = mapped_column(BigInteger)
    weights_ref: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    status: Mapped[str] = mapped_column(String(16))
    merged_into: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


def _v2_version_sizes(conn) -> None:
    """Schema 2: versions record their weights' size (metadata reads no longer touch blobs)."""
    conn.exec_driver_sql(
        "ALTER TABLE hub_versions ADD COLUMN weights_bytes BIGINT NOT NULL DEFAULT 0"
    )
    conn.exec_driver_sql("UPDATE hub_versions SET weights_bytes = length(weights)")


def _v3_blob_refs(conn) -> None:
    """Schema 3: weights may live in blob files, named in ``weights_ref`` (rows keep theirs)."""
    for table in ("hub_versions", "hub_contributions"):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN weights_ref VARCHAR(64)")


#: schema version -> function(connection) that migrates from the previous version
MIGRATIONS: dict[int, Callable] = {2: _v2_version_sizes, 3: _v3_blob_refs}


def sqlite_pragmas(engine, immediate: bool) -> None:
    """WAL, foreign keys and a busy timeout on every SQLite connection; write transactions start
    with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing mid-transaction."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a killed server loses nothing committed; only an OS crash or power
        # loss can drop the last transactions (never corrupts the file)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
