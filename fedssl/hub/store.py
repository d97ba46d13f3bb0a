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

import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import (
    create_engine,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from fedssl.hub import weights as W
from fedssl.hub.blobs import BlobError, BlobFiles, StagedBlob, default_blob_dir
from fedssl.hub.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from fedssl.hub.keys import KEY_PREFIX, KeyInfo, hash_key
from fedssl.hub.schema import (
    MIGRATIONS,
    ROLES,
    SCHEMA_VERSION,
    STATUSES,
    Base,
    ContributionRow,
    KeyRow,
    ModelRow,
    SchemaRow,
    VersionRow,
    now,
    sqlite_pragmas,
)

__all__ = ["Store", "BlobFiles", "BlobError", "KeyInfo", "SCHEMA_VERSION", "ROLES", "STATUSES"]


def _by_name(name: str):
    return select(ModelRow).where(ModelRow.name == name)


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
            blob_dir = default_blob_dir(url)
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
            sqlite_pragmas(self.engine, immediate=True)
            if memory:
                self.read_engine = self.engine
            else:  # reads need no write lock (WAL lets them run beside a writer)
                self.read_engine = create_engine(url, **kw)
                sqlite_pragmas(self.read_engine, immediate=False)
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
                    created_at=now(),
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
            row.revoked_at = now()
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
                created_at=now(),
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
                    created_at=now(),
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
            row.created_at = now()
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
                    created_at=now(),
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
