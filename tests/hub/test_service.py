"""The hub through real gRPC on loopback: the whole flow (SQLite and PostgreSQL), security, bad
input, concurrency and TLS."""

import datetime
import pickle
import threading

import grpc
import pytest
import torch

from fedssl.hub import errors as E
from fedssl.hub import weights as W
from fedssl.hub.client import HubClient


def test_flow_end_to_end(hub_any):
    hub = hub_any
    with hub.client() as manager:
        info = manager.create_model(
            "fmnist", hub.state(0), builder=hub.BUILDER, recipe={"lr": 0.05}, max_staleness=0
        )
        assert (info["version"], info["owner"], info["recipe"]) == (1, "alice", {"lr": 0.05})
        assert info["architecture"]["tensors"]["net.1.weight"]["shape"] == [8, 784]
        keys = [manager.create_key(f"p{i}") for i in range(3)]
    pushed = []
    for i, k in enumerate(keys):
        with HubClient(hub.address, k["api_key"]) as p:
            state, version = p.pull("fmnist")
            assert version == 1 and torch.equal(state["net.1.weight"], hub.state(0)["net.1.weight"])
            new = {n: t + (i + 1) for n, t in state.items()}
            r = p.push("fmnist", version, new, num_examples=100 * (i + 1), metrics={"loss": 0.5})
            assert r["status"] == "pending" and not r["replaced"]
            pushed.append(new)
    with hub.client() as manager:
        rows = manager.contributions("fmnist")
        assert [r["participant"] for r in rows] == ["p0", "p1", "p2"]
        assert manager.info("fmnist")["pending_contributions"] == 3
        v2 = manager.merge("fmnist", 1, "avg", min_contributions=3)
        assert v2["version"] == 2 and v2["parent_version"] == 1 and v2["num_examples"] == 600
        assert {r["status"] for r in manager.contributions("fmnist", 1)} == {"merged"}
    with HubClient(hub.address, keys[0]["api_key"]) as p:
        module, version = p.pull("fmnist", as_module=True)
        expected = sum(w * s["net.1.weight"] for w, s in zip((1, 2, 3), pushed, strict=True)) / 6
        assert version == 2 and torch.allclose(module.net.state_dict()["net.1.weight"], expected)
        old, v1 = p.pull("fmnist", version=1)
        assert v1 == 1 and torch.equal(old["net.1.weight"], hub.state(0)["net.1.weight"])
        # a participant may push its LightningModule directly
        assert p.push("fmnist", 2, module, num_examples=5)["status"] == "pending"


def test_large_model_streams_in_chunks(hub):
    big = {"w": torch.randn(3, 1024, 1024)}  # 12 MiB: over gRPC's 4 MiB default message limit
    with hub.client() as m:
        m.create_model("big", big)
        p = hub.participant("bob")
        state, v = p.pull("big")
        assert torch.equal(state["w"], big["w"])
        assert p.push("big", v, {"w": big["w"] * 2}, 10)["status"] == "pending"
        m.merge("big", 1)
        assert torch.equal(p.pull("big")[0]["w"], big["w"] * 2)


# ------------------------------------------------------------------ security


def _snapshot(hub):
    """Row counts and every file in the blob folder (temporary files included)."""
    rows = {t: hub.store.count(t) for t in ("models", "versions", "contributions", "keys")}
    root = hub.store.blobs.root if hub.store.blobs else None
    files = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()) if root else []
    return rows, files


def test_calls_without_a_valid_key_are_refused(published):
    hub = published
    with hub.client() as m:
        revoked = m.create_key("eve")
        m.revoke_key(revoked["key_id"])
    before = _snapshot(hub)
    for key in ("", "fh_wrong", revoked["api_key"]):
        with HubClient(hub.address, key) as c:
            for call in (
                lambda c=c: c.list_models(),
                lambda c=c: c.pull("m"),
                lambda c=c: c.push("m", 1, hub.state(1), 5),
                lambda c=c: c.merge("m", 1),
                lambda c=c: c.create_key("x"),
            ):
                with pytest.raises(E.Unauthenticated) as err:
                    call()
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert _snapshot(hub) == before


def test_participants_cannot_call_manager_calls(published):
    hub = published
    p = hub.participant("bob")
    before = _snapshot(hub)
    for call in (
        lambda: p.create_model("mine", hub.state(1)),
        lambda: p.contributions("m"),
        lambda: p.merge("m", 1),
        lambda: p.create_key("friend"),
        lambda: p.revoke_key(hub.manager.key_id),
    ):
        with pytest.raises(E.PermissionDenied):
            call()
    assert _snapshot(hub) == before
    p.push("m", 1, hub.state(1), 5)  # but it may contribute
    assert hub.store.count("contributions") == 1


def test_another_managers_key_is_refused(published):
    hub = published
    other, _ = hub.store.create_key("manager", "mallory")
    spy_key, _ = hub.store.create_key("participant", "mallory", "spy")
    p = hub.participant("bob")
    p.push("m", 1, hub.state(1), 5)
    before = _snapshot(hub)
    with hub.client(other) as m2:
        assert m2.list_models() == []
        for call in (
            lambda: m2.info("m"),
            lambda: m2.pull("m"),
            lambda: m2.contributions("m"),
            lambda: m2.merge("m", 1),
            lambda: m2.push("m", 1, hub.state(2), 5),
            lambda: m2.revoke_key(hub.manager.key_id),
        ):
            with pytest.raises(E.PermissionDenied):
                call()
    with hub.client(spy_key) as spy:
        with pytest.raises(E.PermissionDenied):
            spy.push("m", 1, hub.state(2), 5)
    assert _snapshot(hub) == before
    assert hub.store.authenticate(hub.manager_key) is not None  # alice's key not revoked


# ------------------------------------------------------------------ bad input


def _bad_uploads(hub):
    good = hub.state(1)
    wrong_shape = {**good, "net.1.weight": torch.zeros(8, 783)}
    wrong_dtype = {**good, "net.1.bias": good["net.1.bias"].double()}
    missing = {k: v for k, v in good.items() if k != "net.5.bias"}
    extra = {**good, "net.9.weight": torch.zeros(2)}
    nan = {**good, "net.3.weight": torch.full_like(good["net.3.weight"], float("nan"))}
    data = W.encode(good)
    return {
        "wrong shape": (W.encode(wrong_shape), "'net.1.weight': shape"),
        "wrong dtype": (W.encode(wrong_dtype), "'net.1.bias': dtype float64"),
        "missing tensor": (W.encode(missing), "'net.5.bias': missing"),
        "extra tensor": (W.encode(extra), "'net.9.weight': not part of the model"),
        "NaN": (W.encode(nan), "'net.3.weight': holds NaN"),
        "truncated": (data[: len(data) // 2], "truncated"),
        "garbage": (b"\x00\x01 this is not a model" * 10, "not safetensors"),
        "pickle": (pickle.dumps(good), "not safetensors"),
    }


@pytest.mark.parametrize(
    "case",
    ["wrong shape", "wrong dtype", "missing tensor", "extra tensor", "NaN", "truncated",
     "garbage", "pickle"],
)  # fmt: skip
def test_bad_uploads_are_refused_and_nothing_is_stored(published, case):
    hub = published
    data, match = _bad_uploads(hub)[case]
    p = hub.participant("bob")
    before = _snapshot(hub)
    with pytest.raises(E.InvalidArgument, match=match) as err:
        p.push_bytes("m", 1, data, 10)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _snapshot(hub) == before
    assert p.push("m", 1, hub.state(1), 10)["status"] == "pending"  # still serving


def test_other_bad_requests(published):
    hub = published
    p = hub.participant("bob")
    before = _snapshot(hub)
    with pytest.raises(E.NotFound, match="no model 'nope'"):
        p.push("nope", 1, hub.state(1), 10)
    with pytest.raises(E.NotFound):
        p.pull("nope")
    with pytest.raises(E.NotFound, match="no version 9"):
        p.pull("m", version=9)
    with pytest.raises(E.InvalidArgument, match="num_examples must be > 0"):
        p.push("m", 1, hub.state(1), -3)
    with pytest.raises(E.InvalidArgument, match="base version 5"):
        p.push("m", 5, hub.state(1), 3)
    with pytest.raises(E.InvalidArgument, match="not finite"):
        p.push("m", 1, hub.state(1), 3, metrics={"loss": float("nan")})
    with hub.client() as m:
        with pytest.raises(E.InvalidArgument, match="unknown method"):
            m.merge("m", 1, method="best")
        with pytest.raises(E.FailedPrecondition, match="0 pending"):
            m.merge("m", 1)
        with pytest.raises(E.AlreadyExists):
            m.create_model("m", hub.state(3))
        with pytest.raises(E.InvalidArgument, match="NaN"):
            m.create_model("nan-model", {"w": torch.tensor([float("nan")])})
    assert _snapshot(hub) == before


def test_oversize_upload_is_refused(make_hub):
    hub = make_hub(max_upload_bytes=3 << 20)
    with hub.client() as m:
        m.create_model("m", {"w": torch.zeros(1000)})
        with pytest.raises(E.InvalidArgument, match="larger than the limit"):
            m.create_model("huge", {"w": torch.zeros(1 << 20)})  # 4 MiB
    p = hub.participant("bob")
    before = _snapshot(hub)
    too_big = W.encode({"w": torch.zeros(1000)}) + b"\0" * (4 << 20)
    with pytest.raises(E.InvalidArgument, match="larger than the limit"):
        p.push_bytes("m", 1, too_big, 10)
    assert _snapshot(hub) == before
    assert p.push("m", 1, {"w": torch.ones(1000)}, 10)["status"] == "pending"


# ------------------------------------------------------------------ concurrency


def test_twenty_concurrent_uploads_and_a_merge_during_them(hub_any):
    hub = hub_any
    with hub.client() as m:
        m.create_model("m", hub.state(0), builder=hub.BUILDER)
        keys = [m.create_key(f"p{i:02d}")["api_key"] for i in range(20)]
    replies, failures = {}, []
    # built before the threads, so the uploads race each other and the merge, not the builds
    sent = {i: hub.state(100 + i) for i in range(20)}
    start = threading.Barrier(21)

    def upload(i):
        with HubClient(hub.address, keys[i]) as p:
            start.wait()
            try:
                replies[i] = p.push("m", 1, sent[i], 10 + i)
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                failures.append((i, err))

    merged = {}

    def merge():
        start.wait()
        with hub.client() as m:
            try:
                merged["info"] = m.merge("m", 1, min_contributions=1)
            except E.FailedPrecondition as err:  # no contribution had landed yet
                merged["error"] = err

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(20)]
    threads.append(threading.Thread(target=merge))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(replies) == 20
    rows = hub.store.contributions("m", 1)
    assert sorted(r.participant for r in rows) == [f"p{i:02d}" for i in range(20)]  # none lost
    in_merge = set(merged["info"]["contribution_ids"]) if "info" in merged else set()
    for r in rows:  # consistent: merged into v2 exactly when the merge took it
        assert (r.status == "merged") == (r.id in in_merge)
        assert r.status in ("merged", "pending", "stale")
    if in_merge:  # the new version is the weighted mean of exactly the merged ones
        states = {r.id: sent[int(r.participant[1:])] for r in rows}
        n = {r.id: r.num_examples for r in rows}
        want = sum(n[i] * states[i]["net.1.weight"] for i in in_merge) / sum(n[i] for i in in_merge)
        got, _ = hub.client().pull("m")
        assert torch.allclose(got["net.1.weight"], want, atol=1e-6)


# ------------------------------------------------------------------ TLS


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_tls(make_hub, tmp_path):
    cert, key = _self_signed(tmp_path)
    hub = make_hub(tls_cert=cert, tls_key=key)
    address = f"localhost:{hub.port}"
    with HubClient(address, hub.manager_key, root_cert=cert) as m:
        assert m.create_model("m", hub.state())["version"] == 1
        assert [x["name"] for x in m.list_models()] == ["m"]
    with HubClient(address, hub.manager_key, timeout=5) as plain:  # no TLS: cannot talk
        with pytest.raises(E.HubError):
            plain.list_models()
