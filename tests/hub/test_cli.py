"""fedssl-hub: the manager's shell commands against a live hub."""

import pytest
from safetensors.torch import save_file

from fedssl.hub.cli import main


def test_manager_session_from_the_shell(hub, tmp_path, capsys):
    weights = tmp_path / "init.safetensors"
    save_file(hub.state(0), weights)
    remote = ["--address", hub.address, "--api-key", hub.manager_key]
    assert main(["create", "cnn", *remote, "--weights", str(weights),
                 "--builder", '{"model": "mlp", "num_classes": 10, "hidden": 8}']) == 0  # fmt: skip
    assert "created cnn v1" in capsys.readouterr().out
    assert main(["keys", "create", "hospital-a", *remote]) == 0
    out = capsys.readouterr().out
    key, key_id = out.split()[-1], out.split("(id ")[1].split(",")[0]
    with hub.client(key) as p:
        p.push("cnn", 1, hub.state(1), 64, metrics={"loss": 0.25})
    assert main(["status", "cnn", *remote]) == 0
    out = capsys.readouterr().out
    assert "cnn (owner alice): v1" in out and "hospital-a: base v1, 64 examples, pending" in out
    assert main(["merge", "cnn", *remote, "--min", "1"]) == 0
    assert "cnn v2: merged 1 contributions (64 examples, avg)" in capsys.readouterr().out
    assert main(["status", *remote]) == 0
    assert "cnn: v2, 0 pending" in capsys.readouterr().out
    assert main(["keys", "revoke", key_id, *remote]) == 0
    assert "revoked" in capsys.readouterr().out
    assert hub.store.authenticate(key) is None
    # a refused call is an error message and exit code 1, not a traceback
    assert main(["merge", "cnn", *remote, "--base", "1"]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_admin_key_and_missing_key(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    assert main(["admin-key", "--db", db, "--owner", "bob"]) == 0
    secret = capsys.readouterr().out.split()[-1]
    from fedssl.hub.store import Store

    info = Store(db).authenticate(secret)
    assert info is not None and (info.role, info.owner) == ("manager", "bob")
    with pytest.raises(SystemExit, match="no API key"):
        main(["status", "--address", "127.0.0.1:1", "--api-key", ""])


def test_gc_command(tmp_path, capsys):
    import os

    import torch

    from fedssl.hub import weights as W
    from fedssl.hub.store import Store

    db = f"sqlite:///{tmp_path / 'hub.db'}"
    s = Store(db)
    s.create_model("m", "alice", W.encode({"w": torch.zeros(2)}))
    s.blobs.put(b"orphan", W.sha256(b"orphan"))  # as left by an upload that failed to commit
    os.utime(s.blobs.path(W.sha256(b"orphan")), (0, 0))
    s.close()
    assert main(["gc", "--db", db]) == 0
    assert "removed 1 unreferenced blob file(s)" in capsys.readouterr().out
    assert main(["gc", "--db", db, "--blob-dir", "none"]) == 0
    assert "no blob files" in capsys.readouterr().out
    assert len(Store(db).blobs.names()) == 1  # the model's version is kept
