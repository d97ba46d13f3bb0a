"""The SQL store on SQLite and on a real PostgreSQL server: schema, keys, contributions,
staleness, transactional and concurrent merges."""

import threading

import pytest
import torch
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from fedssl.hub import weights as W
from fedssl.hub.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from fedssl.hub.store import SCHEMA_VERSION, KeyRow, Store


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value), "b": torch.full((2,), value)}


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture
def model(store):
    store.create_model("m", "alice", W.encode(_state(0.0)), max_staleness=0)
    _, alice = store.create_key("manager", "alice")
    return store, alice


def _key(store, name):
    return store.create_key("participant", "alice", name)[1]


def test_schema_is_created_then_reused(db_url):
    s = Store(db_url)
    assert s.schema_version() == SCHEMA_VERSION
    s.create_model("m", "alice", W.encode(_state(1.0)))
    s.close()
    again = Store(db_url)  # a restart: same schema, data kept
    assert again.model("m").latest_version == 1 and again.count("versions") == 1
    again.close()


def test_newer_schema_is_refused(db_url):
    Store(db_url).close()
    s = Store(db_url)
    with s.engine.begin() as c:
        c.execute(text("UPDATE hub_schema SET version = 99"))
    s.close()
    with pytest.raises(RuntimeError, match="newer than this fedssl"):
        Store(db_url)


def test_keys_are_stored_hashed_and_revocable(store):
    secret, info = store.create_key("manager", "alice")
    assert store.authenticate(secret) == info
    with Session(store.engine) as s:
        row = s.scalar(select(KeyRow))
        assert secret not in (row.key_hash, row.key_id) and len(row.key_hash) == 64
    assert store.authenticate(secret + "x") is None and store.authenticate("") is None
    assert store.revoke_key(info.key_id, info) is True
    assert store.authenticate(secret) is None
    assert store.revoke_key(info.key_id, info) is False


def test_duplicate_model_and_unknown_model(model):
    store, _ = model
    with pytest.raises(AlreadyExists):
        store.create_model("m", "bob", W.encode(_state(0.0)))
    with pytest.raises(NotFound, match="no model 'nope'"):
        store.model("nope")
    with pytest.raises(NotFound, match="no version 7"):
        store.model("m", 7)


def test_second_contribution_replaces_the_first(model):
    store, _ = model
    bob = _key(store, "bob")
    first = store.add_contribution("m", bob, 1, 10, {"loss": 1.0}, W.encode(_state(1.0)))
    second = store.add_contribution("m", bob, 1, 30, {"loss": 0.5}, W.encode(_state(3.0)))
    assert (first["replaced"], second["replaced"]) == (False, True)
    rows = store.contributions("m", 1)
    assert len(rows) == 1 and rows[0].num_examples == 30 and rows[0].metrics == {"loss": 0.5}
    merged = store.merge("m", 1)
    assert merged.num_examples == 30  # counted once
    _, data = store.weights("m", 2)
    assert torch.equal(W.decode(data)["w"], torch.full((2, 2), 3.0))


def test_fedavg_weights_by_examples_and_merge_is_recorded(model):
    store, _ = model
    a, b = _key(store, "a"), _key(store, "b")
    store.add_contribution("m", a, 1, 10, {}, W.encode(_state(1.0)))
    store.add_contribution("m", b, 1, 30, {}, W.encode(_state(5.0)))
    meta = store.merge("m", 1, "avg")
    assert (meta.version, meta.parent_version, meta.merge_method) == (2, 1, "avg")
    assert len(meta.contribution_ids) == 2 and meta.num_examples == 40
    _, data = store.weights("m")
    assert torch.allclose(W.decode(data)["w"], torch.full((2, 2), 4.0))  # (10*1 + 30*5) / 40
    assert {c.status for c in store.contributions("m", 1)} == {"merged"}
    with pytest.raises(FailedPrecondition, match="is at v2"):
        store.merge("m", 1)  # the same base again


def test_stale_contributions_are_kept_but_never_merged(model):
    store, _ = model
    a, b = _key(store, "a"), _key(store, "b")
    store.add_contribution("m", a, 1, 10, {}, W.encode(_state(1.0)))
    store.merge("m", 1)
    late = store.add_contribution("m", b, 1, 10, {}, W.encode(_state(100.0)))
    assert late["status"] == "stale" and "never be merged" in late["message"]
    store.add_contribution("m", a, 2, 10, {}, W.encode(_state(2.0)))
    meta = store.merge("m", 2)
    assert meta.contribution_ids == [c.id for c in store.contributions("m", 2)]
    _, data = store.weights("m")
    assert torch.equal(W.decode(data)["w"], torch.full((2, 2), 2.0))
    assert [c.status for c in store.contributions("m", 1)] == ["merged", "stale"]


def test_max_staleness_one_merges_one_version_old_contributions(store):
    store.create_model("s", "alice", W.encode(_state(0.0)), max_staleness=1)
    a, b = _key(store, "a"), _key(store, "b")
    store.add_contribution("s", a, 1, 10, {}, W.encode(_state(1.0)))
    store.merge("s", 1)
    ok = store.add_contribution("s", b, 1, 10, {}, W.encode(_state(3.0)))  # 1 behind: accepted
    assert ok["status"] == "pending"
    store.add_contribution("s", a, 2, 10, {}, W.encode(_state(1.0)))
    meta = store.merge("s", 2)
    assert len(meta.contribution_ids) == 2
    too_old = store.add_contribution("s", _key(store, "c"), 1, 10, {}, W.encode(_state(9.0)))
    assert too_old["status"] == "stale"  # now 2 behind


def test_failed_merge_changes_nothing(model):
    store, _ = model
    for name, v in (("a", 1.0), ("b", 2.0)):
        store.add_contribution("m", _key(store, name), 1, 10, {}, W.encode(_state(v)))

    def boom(states, method, **kw):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.merge("m", 1, merge_fn=boom)
    assert store.model("m").latest_version == 1 and store.count("versions") == 1
    assert {c.status for c in store.contributions("m", 1)} == {"pending"}
    with pytest.raises(FailedPrecondition, match="needs at least 3"):
        store.merge("m", 1, min_contributions=3)
    assert store.merge("m", 1).version == 2  # and a good merge still works


def test_bad_arguments(model):
    store, _ = model
    bob = _key(store, "bob")
    with pytest.raises(InvalidArgument, match="num_examples"):
        store.add_contribution("m", bob, 1, -5, {}, W.encode(_state(1.0)))
    with pytest.raises(InvalidArgument, match="base version 3"):
        store.add_contribution("m", bob, 3, 5, {}, W.encode(_state(1.0)))
    with pytest.raises(InvalidArgument, match="role"):
        store.create_key("admin", "alice")
    assert store.count("contributions") == 0


def test_concurrent_merges_of_one_base_make_one_version(model):
    store, _ = model
    for i in range(4):
        store.add_contribution("m", _key(store, f"p{i}"), 1, 10, {}, W.encode(_state(float(i))))
    results, errors = [], []
    barrier = threading.Barrier(4)

    def merge():
        barrier.wait()
        try:
            results.append(store.merge("m", 1).version)
        except FailedPrecondition as err:
            errors.append(err)

    threads = [threading.Thread(target=merge) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2] and len(errors) == 3
    assert store.count("versions") == 2 and store.model("m").latest_version == 2


def test_schema_1_database_is_migrated_on_start(db_url):
    s = Store(db_url, blob_dir=None)  # schemas 1 and 2 kept weights in the rows
    s.create_model("m", "alice", W.encode(_state(1.0)))
    size = s.model("m").weights_bytes
    with s.engine.begin() as c:  # turn it into a schema-1 database
        c.execute(text("ALTER TABLE hub_versions DROP COLUMN weights_bytes"))
        for table in ("hub_versions", "hub_contributions"):
            c.execute(text(f"ALTER TABLE {table} DROP COLUMN weights_ref"))
        c.execute(text("UPDATE hub_schema SET version = 1"))
    s.close()
    migrated = Store(db_url)
    assert migrated.schema_version() == SCHEMA_VERSION == 3
    assert migrated.model("m").weights_bytes == size > 0  # filled from the stored blobs
    migrated.close()


def test_schema_2_rows_stay_readable_beside_new_blob_files(db_url, tmp_path):
    """Weights stored in rows before blob files existed are still served and merged; new
    uploads of the migrated store go to files."""
    s = Store(db_url, blob_dir=None)
    s.create_model("m", "alice", W.encode(_state(0.0)))
    s.add_contribution("m", _key(s, "p1"), 1, 1, {}, W.encode(_state(2.0)))
    with s.engine.begin() as c:
        for table in ("hub_versions", "hub_contributions"):
            c.execute(text(f"ALTER TABLE {table} DROP COLUMN weights_ref"))
        c.execute(text("UPDATE hub_schema SET version = 2"))
    s.close()
    blobs = tmp_path / "blobs"
    s = Store(db_url, blob_dir=blobs)
    assert s.schema_version() == 3 and s.blobs.names() == set()
    s.add_contribution("m", _key(s, "p2"), 1, 3, {}, W.encode(_state(6.0)))  # to a file
    assert len(s.blobs.names()) == 1
    merged = s.merge("m", 1, "avg", min_contributions=2)
    _, data = s.weights("m", merged.version)
    assert torch.allclose(W.decode(data)["w"], torch.full((2, 2), 5.0))  # (2*1 + 6*3) / 4
    assert merged.weights_sha256 in s.blobs.names()  # the new version is a file too
    _, old = s.weights("m", 1)  # the version still in its row
    assert torch.equal(W.decode(old)["w"], torch.zeros(2, 2))
    s.close()


def test_weights_go_to_blob_files_beside_a_sqlite_file(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    assert s.blobs.root == tmp_path / "hub.blobs"
    meta = s.create_model("m", "alice", W.encode(_state(0.0)))
    data = W.encode(_state(1.0))
    s.add_contribution("m", _key(s, "p1"), 1, 1, {}, data)
    s.add_contribution("m", _key(s, "p2"), 1, 1, {}, data)  # same bytes: one file
    assert s.blobs.names() == {meta.weights_sha256, W.sha256(data)}
    with Session(s.engine) as db:  # the rows hold the names, not the bytes
        assert db.execute(text("SELECT max(length(weights)) FROM hub_contributions")).scalar() == 0
    assert Store("sqlite://").blobs is None  # in memory: rows
    s.close()


def test_a_server_database_keeps_weights_in_rows_unless_given_a_folder(pg_url, tmp_path):
    rows = Store(pg_url)
    assert rows.blobs is None
    rows.create_model("m", "alice", W.encode(_state(0.0)))
    rows.close()
    files = Store(pg_url, blob_dir=tmp_path / "shared-blobs")
    files.add_contribution("m", _key(files, "p1"), 1, 1, {}, W.encode(_state(4.0)))
    merged = files.merge("m", 1)
    assert files.blobs.names() == {W.sha256(W.encode(_state(4.0))), merged.weights_sha256}
    assert torch.equal(W.decode(files.weights("m")[1])["b"], torch.full((2,), 4.0))
    files.close()


def test_damaged_or_missing_blob_is_reported_and_the_merge_changes_nothing(tmp_path):
    from fedssl.hub.errors import DataLoss

    s = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    s.create_model("m", "alice", W.encode(_state(0.0)))
    good, bad = W.encode(_state(1.0)), W.encode(_state(2.0))
    s.add_contribution("m", _key(s, "p1"), 1, 1, {}, good)
    s.add_contribution("m", _key(s, "p2"), 1, 1, {}, bad)
    path = s.blobs.path(W.sha256(bad))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit on disk
    path.write_bytes(raw)
    with pytest.raises(DataLoss, match="damaged"):
        s.merge("m", 1)
    assert s.model("m").latest_version == 1 and s.count("versions") == 1
    assert {c.status for c in s.contributions("m")} == {"pending"}
    s.blobs.path(s.model("m").weights_sha256).unlink()
    with pytest.raises(DataLoss, match="missing"):
        s.weights("m")
    s.close()


def test_garbage_collection_removes_only_unused_old_files(tmp_path):
    import os

    s = Store(f"sqlite:///{tmp_path / 'hub.db'}", fsync=False)
    s.create_model("m", "alice", W.encode(_state(0.0)))
    p1 = _key(s, "p1")
    first, second = W.encode(_state(1.0)), W.encode(_state(2.0))
    s.add_contribution("m", p1, 1, 1, {}, first)
    s.add_contribution("m", p1, 1, 1, {}, second)  # replaces the first: its file is unused
    orphan = s.blobs.path(W.sha256(first))
    assert s.collect_garbage(min_age_s=3600) == 0  # too young: could be an upload in flight
    old = orphan.stat().st_mtime - 7200
    for name in s.blobs.names():
        os.utime(s.blobs.path(name), (old, old))
    assert s.collect_garbage(min_age_s=3600) == 1
    assert not orphan.exists() and len(s.blobs.names()) == 2
    merged = s.merge("m", 1)  # everything still referenced is intact
    assert torch.equal(W.decode(s.weights("m", merged.version)[1])["w"], torch.full((2, 2), 2.0))
    s.close()


def test_a_staged_blob_is_invisible_until_committed_and_leaves_nothing_when_discarded(tmp_path):
    """The server writes an upload's file while it validates the tensors (``stage_blob``):
    discarding it (a refused upload) leaves no file at all, temporary ones included."""
    s = Store(f"sqlite:///{tmp_path / 'hub.db'}")
    s.create_model("m", "alice", W.encode(_state(0.0)))
    root = s.blobs.root
    before = sorted(f for f in root.rglob("*") if f.is_file())
    data = W.encode(_state(1.0))
    staged = s.stage_blob(data, W.sha256(data))
    staged.discard()
    assert sorted(f for f in root.rglob("*") if f.is_file()) == before
    staged = s.stage_blob(data, W.sha256(data))
    out = s.add_contribution("m", _key(s, "p1"), 1, 1, {}, data, W.sha256(data), staged=staged)
    assert out["status"] == "pending" and W.sha256(data) in s.blobs.names()
    assert not list(root.rglob(".tmp-*"))
    again = s.stage_blob(data, W.sha256(data))  # identical bytes: nothing written twice
    assert again.tmp is None and again.commit() == s.blobs.path(W.sha256(data))
    refused = s.stage_blob(W.encode(_state(2.0)), W.sha256(W.encode(_state(2.0))))
    with pytest.raises(InvalidArgument, match="num_examples"):
        s.add_contribution("m", _key(s, "p2"), 1, 0, {}, b"", staged=refused)
    assert not list(root.rglob(".tmp-*")) and len(s.blobs.names()) == 2
    assert Store("sqlite://").stage_blob(data, W.sha256(data)) is None  # weights in rows
    s.close()
