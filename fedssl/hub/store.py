"""The hub's SQL store (SQLAlchemy 2): models, versions, contributions and API keys.

Any SQLAlchemy URL works (``sqlite:///hub.db`` by default, ``postgresql+psycopg://...``). The
schema is created on first start and migrated on later starts (``hub_schema`` holds its version).
Every method is one transaction; the merge locks the model's row so two concurrent merges of the
same base produce one new version, and a failed merge leaves nothing behind.

Weights (safetensors bytes) live either in the rows (``LargeBinary``) or, with a blob directory,
in files named by their SHA-256 (:class:`BlobFiles`), the row holding the name. Files are much
faster for 100 MB models (SQLite writes a 100 MB row in about a second, a file in a few hundredths).
A SQLite file store puts its blobs in ``<name>.blobs/`` beside the database by default; a server
database (PostgreSQL) keeps them in the rows unless ``blob_dir`` is given (every hub process using
that database must then see the same directory). A file is written and flushed to disk before the
row naming it commits, and its hash is checked whenever it is read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from fedssl.hub import weights as W
from fedssl.hub.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

__all__ = ["Store", "BlobFiles", "BlobError", "KeyInfo", "SCHEMA_VERSION", "ROLES", "STATUSES"]

#: bump with a migration in :data:`MIGRATIONS` when a table changes
SCHEMA_VERSION = 3
ROLES = ("manager", "participant")
STATUSES = ("pending", "merged", "stale", "rejected")
KEY_PREFIX = "fh_"


def _now() -> dt.datetime:
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


class BlobError(DataLoss):
    """A stored blob file is missing or no longer matches its hash (the store was damaged)."""


class BlobFiles:
    """Content-addressed weights files: ``<root>/<sha[:2]>/<sha256>``.

    ``put`` writes to a temporary file in the same folder, flushes it to disk (unless
    ``fsync=False``) and renames it into place, so a reader never sees half a file and a crash
    leaves either nothing or the whole blob. Identical bytes are stored once. Files no row names
    any more (a replaced contribution's, or one whose transaction failed) are removed by
    :meth:`Store.collect_garbage`.
    """

    def __init__(self, root: str | os.PathLike, fsync: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BlobError(f"not a blob name: {sha!r}")
        return self.root / sha[:2] / sha

    def put(self, data: bytes | bytearray, sha: str) -> Path:
        """Store ``data`` (whose SHA-256 is ``sha``) unless an intact copy is already there."""
        return self.stage(data, sha, background=False).commit()

    def stage(self, data: bytes | bytearray, sha: str, background: bool = True) -> StagedBlob:
        """Start writing ``data`` to a temporary file beside its final place (in a thread, with
        ``background``: the caller checks the bytes meanwhile). Nothing is visible until
        :meth:`StagedBlob.commit`; :meth:`StagedBlob.discard` removes the temporary file."""
        return StagedBlob(self, data, sha, background)

    def get(self, sha: str, size: int) -> bytearray:
        """The blob's bytes (a ``bytearray``), checked against its size and hash."""
        path = self.path(sha)
        try:
            buf = bytearray(size)
            with open(path, "rb") as f:
                got = f.readinto(buf)
                extra = f.read(1)
        except FileNotFoundError:
            raise BlobError(f"blob {sha} is missing from {self.root}") from None
        if got != size or extra or W.sha256(buf) != sha:
            raise BlobError(f"blob {path} is damaged (size or SHA-256 differs from its record)")
        return buf

    def names(self) -> set[str]:
        return {p.name for p in self.root.glob("??/*") if not p.name.startswith(".tmp-")}


class StagedBlob:
    """A blob file being written (see :meth:`BlobFiles.stage`); commit or discard it once."""

    def __init__(self, files: BlobFiles, data: bytes | bytearray, sha: str, background: bool):
        self.path, self.tmp, self._error = files.path(sha), None, None
        self._thread = None
        if self.path.is_file() and self.path.stat().st_size == len(data):
            return  # identical bytes are stored already
        self.path.parent.mkdir(exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        if background:  # file writes and fsync release the GIL
            self._thread = threading.Thread(
                target=self._write, args=(fd, data, files.fsync), name="blob-writer", daemon=True
            )
            self._thread.start()
        else:
            self._write(fd, data, files.fsync)

    def _write(self, fd: int, data, fsync: bool) -> None:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException as err:  # re-raised by commit()
            self._error = err

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def commit(self) -> Path:
        """Wait for the write, then move the file into place (atomically)."""
        self._wait()
        if self.tmp is None:
            os.utime(self.path)  # fresh again: collect_garbage spares files just (re)used
            return self.path
        try:
            if self._error is not None:
                raise self._error
            os.replace(self.tmp, self.path)
        except BaseException:
            Path(self.tmp).unlink(missing_ok=True)
            raise
        finally:
            self.tmp = None
        return self.path

    def discard(self) -> None:
        """Wait for the write and remove the temporary file: nothing stays behind."""
        self._wait()
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)
            self.tmp = None


def _by_name(name: str):
    return select(ModelRow).where(ModelRow.name == name)


def _default_blob_dir(url: str) -> str | None:
    """``<db>.blobs`` beside a SQLite database file; None (blobs in rows) otherwise."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///:memory:",):
        return None
    db = Path(url.removeprefix("sqlite:///").split("?")[0])
    return str(db.with_name(db.name.removesuffix(".db") + ".blobs"))


@dataclass(frozen=True)
class KeyInfo:
    """An authenticated caller."""

    key_id: str
    role: str
    owner: str
    participant: str


@dataclass
class ModelMeta:
    """A model and one of its versions (no weights)."""

    name: str
    owner: str
    architecture_json: str
    recipe_json: str
    version: int
    latest_version: int
    max_staleness: int
    max_upload_bytes: int
    weights_bytes: int
    weights_sha256: str
    parent_version: int
    merge_method: str
    contribution_ids: list[int] = field(default_factory=list)
    num_examples: int = 0
    pending_contributions: int = 0

    @property
    def spec(self) -> dict:
        return json.loads(self.architecture_json)["tensors"]


@dataclass
class ContributionMeta:
    id: int
    participant: str
    base_version: int
    num_examples: int
    metrics: dict
    status: str
    merged_into: int
    weights_bytes: int
    created_at: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """All of the hub's persistent state behind one SQLAlchemy engine.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``).
        max_upload_bytes: default per-model upload limit.
        blob_dir: where weights files go. ``"auto"`` (default): ``<db>.blobs`` beside a SQLite
            database file, in the rows for any other database; ``None``, ``""`` or ``"none"``:
            always in the rows; a path: files there.
        fsync: flush every blob file to disk before its row commits.
    """

    def __init__(
        self,
        url: str = "sqlite:///hub.db",
        max_upload_bytes: int = 512 << 20,
        blob_dir: str | os.PathLike | None = "auto",
        fsync: bool = True,
    ):
        self.url = url
        self.max_upload_bytes = max_upload_bytes
        if blob_dir == "auto":
            blob_dir = _default_blob_dir(url)
        elif blob_dir == "none":  # the CLI's spelling of None
            blob_dir = None
        self.blobs = BlobFiles(blob_dir, fsync=fsync) if blob_dir else None
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            memory = url in ("sqlite://", "sqlite:///:memory:")
            kw: dict = {"connect_args": {"check_same_thread": False, "timeout": 60}}
            if memory:
                kw["poolclass"] = StaticPool
            self.engine = create_engine(url, **kw)
            _sqlite_pragmas(self.engine, immediate=True)
            if memory:
                self.read_engine = self.engine
            else:  # reads need no write lock (WAL lets them run beside a writer)
                self.read_engine = create_engine(url, **kw)
                _sqlite_pragmas(self.read_engine, immediate=False)
        else:
            self.engine = create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
            self.read_engine = self.engine
        self._migrate()

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        from sqlalchemy import inspect

        if inspect(self.engine).has_table("hub_schema"):
            with Session(self.engine) as s, s.begin():
                self._upgrade(s)
        Base.metadata.create_all(self.engine)  # new tables (all of them on a fresh database)
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(SchemaRow).where(SchemaRow.id == 1))
            if row is None:
                s.add(SchemaRow(id=1, version=SCHEMA_VERSION))
                return
            if row.version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.url}: hub schema version {row.version} is newer than this fedssl "
                    f"({SCHEMA_VERSION}); upgrade fedssl"
                )
            row.version = SCHEMA_VERSION  # _upgrade ran the migrations

    def _upgrade(self, s: Session) -> None:
        """Run the migrations from the stored schema version to :data:`SCHEMA_VERSION`."""
        row = s.scalar(select(SchemaRow).where(SchemaRow.id == 1))
        if row is None or row.version >= SCHEMA_VERSION:
            return  # fresh, current, or newer (refused by the caller)
        for v in range(row.version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[v](s.connection())
        row.version = SCHEMA_VERSION

    def schema_version(self) -> int:
        with Session(self.read_engine) as s:
            return int(s.scalar(select(SchemaRow.version).where(SchemaRow.id == 1)))

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    # ------------------------------------------------------------------ keys

    def create_key(
        self, role: str, owner: str, participant: str = "", issued_by: str | None = None
    ) -> tuple[str, KeyInfo]:
        """A new API key; returns ``(secret, info)`` — the secret is not stored, only its hash."""
        if role not in ROLES:
            raise InvalidArgument(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if not owner:
            raise InvalidArgument("a key needs an owner (the manager's name)")
        participant = participant or owner
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "k_" + secrets.token_hex(8)
        with Session(self.engine) as s, s.begin():
            s.add(
                KeyRow(
                    key_id=key_id,
                    key_hash=hash_key(secret),
                    role=role,
                    owner=owner,
                    participant=participant,
                    issued_by=issued_by,
                    created_at=_now(),
                )
            )
        return secret, KeyInfo(key_id, role, owner, participant)

    def authenticate(self, secret: str) -> KeyInfo | None:
        """The key's info, or None for an unknown or revoked key."""
        if not secret or not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        with Session(self.read_engine) as s:
            row = s.scalar(select(KeyRow).where(KeyRow.key_hash == hash_key(secret)))
            if row is None or row.revoked_at is not None:
                return None
            return KeyInfo(row.key_id, row.role, row.owner, row.participant)

    def revoke_key(self, key_id: str, by: KeyInfo) -> bool:
        """Revoke ``key_id``: a manager may revoke its own keys and those it issued."""
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(KeyRow).where(KeyRow.key_id == key_id))
            if row is None:
                raise NotFound(f"no key {key_id!r}")
            if by.role != "manager" or row.owner != by.owner:
                raise PermissionDenied(f"key {key_id!r} belongs to another manager")
            if row.revoked_at is not None:
                return False
            row.revoked_at = _now()
            return True

    # ------------------------------------------------------------------ models

    def create_model(
        self,
        name: str,
        owner: str,
        data: bytes,
        builder: Mapping | None = None,
        recipe: Mapping | None = None,
        max_staleness: int = 0,
        max_upload_bytes: int = 0,
        sha256: str | None = None,
    ) -> ModelMeta:
        """Publish ``name`` with the safetensors ``data`` as version 1 (``sha256``: its hash,
        when the caller computed it already)."""
        if not name or len(name) > 128:
            raise InvalidArgument("a model needs a name of 1-128 characters")
        if max_staleness < 0:
            raise InvalidArgument(f"max_staleness must be >= 0, got {max_staleness}")
        state = W.decode(data)
        spec = W.tensor_spec(state)
        W.validate(state, spec)  # finiteness
        limit = max_upload_bytes or max(self.max_upload_bytes, 2 * len(data))
        with Session(self.read_engine) as s:  # refused before any file is written
            if s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                raise AlreadyExists(f"model {name!r} exists")
        sha, ref = self._put_blob(data, sha256)
        with Session(self.engine) as s, s.begin():
            if s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                raise AlreadyExists(f"model {name!r} exists")
            m = ModelRow(
                name=name,
                owner=owner,
                architecture=W.spec_json(spec, builder),
                recipe=json.dumps(dict(recipe or {}), sort_keys=True),
                max_staleness=max_staleness,
                max_upload_bytes=limit,
                current_version=1,
                created_at=_now(),
            )
            s.add(m)
            try:
                s.flush()
            except IntegrityError:
                raise AlreadyExists(f"model {name!r} exists") from None
            s.add(
                VersionRow(
                    model_id=m.id,
                    number=1,
                    weights=b"" if ref else data,
                    weights_ref=ref,
                    weights_bytes=len(data),
                    weights_sha256=sha,
                    parent=0,
                    merge_method="",
                    contribution_ids="[]",
                    num_examples=0,
                    created_at=_now(),
                )
            )
            return self._meta(s, m, 1)

    def list_models(self, owner: str | None = None) -> list[ModelMeta]:
        with Session(self.read_engine) as s:
            q = select(ModelRow).order_by(ModelRow.name)
            if owner is not None:
                q = q.where(ModelRow.owner == owner)
            return [self._meta(s, m, m.current_version) for m in s.scalars(q)]

    def model(self, name: str, version: int = 0) -> ModelMeta:
        """Metadata of ``name`` at ``version`` (0: latest)."""
        with Session(self.read_engine) as s:
            m = self._model_row(s, name)
            return self._meta(s, m, version or m.current_version)

    def weights(
        self, name: str, version: int = 0, meta: ModelMeta | None = None
    ) -> tuple[ModelMeta, bytes | bytearray]:
        """Metadata and safetensors bytes of ``name`` at ``version`` (0: latest). ``meta``:
        that version's metadata if the caller read it already (it is not read again)."""
        with Session(self.read_engine) as s:
            m = self._model_row(s, name)
            if meta is None or meta.name != name or (version and meta.version != version):
                meta = self._meta(s, m, version or m.current_version)
            row = s.scalar(
                select(VersionRow).where(
                    VersionRow.model_id == m.id, VersionRow.number == meta.version
                )
            )
            return meta, self._blob(row)

    # ------------------------------------------------------------------ contributions

    def add_contribution(
        self,
        name: str,
        key: KeyInfo,
        base_version: int,
        num_examples: int,
        metrics: Mapping[str, float],
        data: bytes | bytearray,
        sha256: str | None = None,
        staged: StagedBlob | None = None,
    ) -> dict:
        """Store a validated contribution (``pending``, or ``stale`` when its base is too old).

        A participant's second contribution to the same base version replaces its first.
        ``staged``: ``data``'s blob file already being written (:meth:`stage_blob`).
        Returns ``{"id", "status", "replaced", "latest_version", "message"}``.
        """
        try:  # refused before any file is written (checked again in the transaction)
            if num_examples <= 0:
                raise InvalidArgument(f"num_examples must be > 0, got {num_examples}")
            with Session(self.read_engine) as s:
                self._check_base(name, base_version, s.scalar(_by_name(name)))
        except BaseException:
            if staged is not None:
                staged.discard()
            raise
        # before the transaction: no lock held while writing
        _, ref = self._put_blob(data, sha256, staged)
        with Session(self.engine) as s, s.begin():
            m = s.scalar(_by_name(name).with_for_update(read=True))
            self._check_base(name, base_version, m)
            behind = m.current_version - base_version
            status = "stale" if behind > m.max_staleness else "pending"
            old = s.scalar(
                select(ContributionRow).where(
                    ContributionRow.model_id == m.id,
                    ContributionRow.base_version == base_version,
                    ContributionRow.participant == key.participant,
                )
            )
            if old is not None and old.status == "merged":
                raise FailedPrecondition(
                    f"{key.participant}'s contribution to {name!r} v{base_version} was already "
                    f"merged into v{old.merged_into}; pull v{m.current_version} and train again"
                )
            row = old or ContributionRow(
                model_id=m.id, participant=key.participant, base_version=base_version
            )
            row.key_id = key.key_id
            row.num_examples = num_examples
            row.metrics = json.dumps(dict(metrics), sort_keys=True)
            row.weights = b"" if ref else data
            row.weights_ref = ref
            row.weights_bytes = len(data)
            row.status = status
            row.merged_into = 0
            row.created_at = _now()
            if old is None:
                s.add(row)
            s.flush()
            message = (
                f"stored as stale: base v{base_version} is {behind} version(s) behind v"
                f"{m.current_version} and {name!r} accepts at most {m.max_staleness}; it will "
                "never be merged — pull the latest version and train again"
                if status == "stale"
                else f"pending for the merge into v{m.current_version + 1}"
            )
            return {
                "id": row.id,
                "status": status,
                "replaced": old is not None,
                "latest_version": m.current_version,
                "message": message,
            }

    @staticmethod
    def _check_base(name: str, base_version: int, m: ModelRow | None) -> None:
        if m is None:
            raise NotFound(f"no model {name!r}")
        if not 1 <= base_version <= m.current_version:
            raise InvalidArgument(
                f"base version {base_version} of {name!r} does not exist (latest: "
                f"{m.current_version})"
            )

    def contributions(self, name: str, base_version: int = 0) -> list[ContributionMeta]:
        with Session(self.read_engine) as s:
            m = self._model_row(s, name)
            base = base_version or m.current_version
            rows = s.scalars(
                select(ContributionRow)
                .where(ContributionRow.model_id == m.id, ContributionRow.base_version == base)
                .order_by(ContributionRow.id)
            )
            return [_contribution_meta(r) for r in rows]

    def count(self, table: str) -> int:
        """Rows in one of the hub's tables (for tests and status output)."""
        tables = {
            "models": ModelRow,
            "versions": VersionRow,
            "contributions": ContributionRow,
            "keys": KeyRow,
        }
        with Session(self.read_engine) as s:
            return int(s.scalar(select(func.count()).select_from(tables[table])))

    # ------------------------------------------------------------------ merge

    def merge(
        self,
        name: str,
        base_version: int,
        method: str = "avg",
        min_contributions: int = 1,
        merge_fn: Callable | None = None,
    ) -> ModelMeta:
        """Merge the pending contributions to ``base_version`` (the current version, and up to
        ``max_staleness`` versions before it) into version ``base_version + 1``.

        ``avg`` weights contributions by their example counts (FedAvg). All in one transaction:
        on any error there is no new version and no contribution changes status.
        """
        from fedssl.aggregation import merge as default_merge

        merge_fn = merge_fn or default_merge
        min_contributions = max(1, min_contributions)
        with Session(self.engine) as s, s.begin():
            m = s.scalar(select(ModelRow).where(ModelRow.name == name).with_for_update())
            if m is None:
                raise NotFound(f"no model {name!r}")
            if base_version != m.current_version:
                raise FailedPrecondition(
                    f"{name!r} is at v{m.current_version}: merging v{base_version} again would "
                    "make a second version from the same base"
                )
            lowest = m.current_version - m.max_staleness
            rows = list(
                s.scalars(
                    select(ContributionRow)
                    .where(
                        ContributionRow.model_id == m.id,
                        ContributionRow.status == "pending",
                        ContributionRow.base_version >= lowest,
                    )
                    .order_by(ContributionRow.id)
                )
            )
            if len(rows) < min_contributions:
                raise FailedPrecondition(
                    f"{name!r} v{base_version} has {len(rows)} pending contribution(s); the merge "
                    f"needs at least {min_contributions}"
                )
            states = [W.decode(self._blob(r)) for r in rows]
            counts = [r.num_examples for r in rows]
            kwargs = {"weights": counts} if method == "avg" else {}
            try:
                merged = merge_fn(states, method=method, **kwargs)
            except ValueError as err:
                raise InvalidArgument(f"merge failed: {err}") from None
            data = W.encode(merged)
            sha, ref = self._put_blob(data)
            number = m.current_version + 1
            s.add(
                VersionRow(
                    model_id=m.id,
                    number=number,
                    weights=b"" if ref else data,
                    weights_ref=ref,
                    weights_bytes=len(data),
                    weights_sha256=sha,
                    parent=base_version,
                    merge_method=method,
                    contribution_ids=json.dumps([r.id for r in rows]),
                    num_examples=int(sum(counts)),
                    created_at=_now(),
                )
            )
            for r in rows:
                r.status, r.merged_into = "merged", number
            # contributions now beyond the staleness bound will never be merged
            for r in s.scalars(
                select(ContributionRow).where(
                    ContributionRow.model_id == m.id,
                    ContributionRow.status == "pending",
                    ContributionRow.base_version < number - m.max_staleness,
                )
            ):
                r.status = "stale"
            m.current_version = number
            s.flush()
            return self._meta(s, m, number)

    # ------------------------------------------------------------------ blobs

    def stage_blob(self, data: bytes | bytearray, sha: str) -> StagedBlob | None:
        """Start writing upload bytes (SHA-256 ``sha``) to their blob file in the background
        while the caller validates them; None when weights live in the rows. Pass the result
        to :meth:`add_contribution`, or ``discard()`` it."""
        return None if self.blobs is None else self.blobs.stage(data, sha)

    def _put_blob(
        self, data: bytes | bytearray, sha: str | None = None, staged: StagedBlob | None = None
    ) -> tuple[str, str | None]:
        """``(sha256, ref)``: the bytes go to a blob file (ref = its name) when the store has
        a blob directory, else ref is None and the caller keeps them in the row. ``sha``: the
        bytes' SHA-256 if already known (the server hashes uploads while receiving them);
        ``staged``: their file, already being written."""
        sha = sha or W.sha256(data)
        if staged is not None:
            staged.commit()
            return sha, sha
        if self.blobs is None:
            return sha, None
        self.blobs.put(data, sha)
        return sha, sha

    def _blob(self, row) -> bytes | bytearray:
        """A version's or contribution's bytes, from its row or its blob file."""
        if row.weights_ref is None:
            return row.weights
        if self.blobs is None:
            raise BlobError(
                f"{self.url}: weights are in blob files but this store was opened without a "
                "blob directory (pass the one the hub was started with)"
            )
        return self.blobs.get(row.weights_ref, row.weights_bytes)

    def collect_garbage(self, min_age_s: float = 3600.0) -> int:
        """Delete blob files that no row names and that are older than ``min_age_s`` (younger
        ones may belong to an upload whose row is about to commit). Returns files removed."""
        if self.blobs is None:
            return 0
        with Session(self.read_engine) as s:
            used = set(
                s.scalars(select(VersionRow.weights_ref).where(VersionRow.weights_ref.is_not(None)))
            )
            used |= set(
                s.scalars(
                    select(ContributionRow.weights_ref).where(
                        ContributionRow.weights_ref.is_not(None)
                    )
                )
            )
        removed, now = 0, time.time()
        for name in self.blobs.names() - used:
            path = self.blobs.path(name)
            try:
                if now - path.stat().st_mtime >= min_age_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _model_row(s: Session, name: str) -> ModelRow:
        m = s.scalar(select(ModelRow).where(ModelRow.name == name))
        if m is None:
            raise NotFound(f"no model {name!r}")
        return m

    @staticmethod
    def _meta(s: Session, m: ModelRow, version: int) -> ModelMeta:
        v = s.execute(
            select(
                VersionRow.number,
                VersionRow.weights_sha256,
                VersionRow.parent,
                VersionRow.merge_method,
                VersionRow.contribution_ids,
                VersionRow.num_examples,
                VersionRow.weights_bytes,
            ).where(VersionRow.model_id == m.id, VersionRow.number == version)
        ).first()
        if v is None:
            raise NotFound(
                f"model {m.name!r} has no version {version} (latest: {m.current_version})"
            )
        pending = s.scalar(
            select(func.count())
            .select_from(ContributionRow)
            .where(
                ContributionRow.model_id == m.id,
                ContributionRow.status == "pending",
                ContributionRow.base_version >= m.current_version - m.max_staleness,
            )
        )
        return ModelMeta(
            name=m.name,
            owner=m.owner,
            architecture_json=m.architecture,
            recipe_json=m.recipe,
            version=v[0],
            latest_version=m.current_version,
            max_staleness=m.max_staleness,
            max_upload_bytes=m.max_upload_bytes,
            weights_bytes=int(v[6] or 0),
            weights_sha256=v[1],
            parent_version=v[2],
            merge_method=v[3],
            contribution_ids=json.loads(v[4]),
            num_examples=int(v[5]),
            pending_contributions=int(pending or 0),
        )


def _contribution_meta(r: ContributionRow) -> ContributionMeta:
    return ContributionMeta(
        id=r.id,
        participant=r.participant,
        base_version=r.base_version,
        num_examples=r.num_examples,
        metrics=json.loads(r.metrics),
        status=r.status,
        merged_into=r.merged_into,
        weights_bytes=r.weights_bytes,
        created_at=r.created_at.isoformat(timespec="seconds"),
    )


def _sqlite_pragmas(engine, immediate: bool) -> None:
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
