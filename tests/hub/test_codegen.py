"""The committed gRPC code is what hub.proto generates."""

from pathlib import Path

import pytest

import fedssl.hub

HUB = Path(fedssl.hub.__file__).parent


def test_regenerating_changes_nothing(tmp_path):
    pytest.importorskip("grpc_tools")
    from fedssl.hub.codegen import generate

    for fresh in generate(tmp_path):
        committed = HUB / fresh.name
        assert fresh.read_bytes() == committed.read_bytes(), (
            f"{committed.name} is out of date with hub.proto: run python -m fedssl.hub.codegen"
        )


def test_every_rpc_of_the_proto_is_served():
    from fedssl.hub import hub_pb2
    from fedssl.hub.server import HubService

    rpcs = hub_pb2.DESCRIPTOR.services_by_name["Hub"].methods_by_name
    assert set(rpcs) == {
        "CreateModel", "ListModels", "GetModelInfo", "GetModel", "Contribute",
        "ListContributions", "Merge", "CreateKey", "RevokeKey",
    }  # fmt: skip
    for name in rpcs:  # overridden, not the generated UNIMPLEMENTED stub
        assert getattr(HubService, name).__module__ == "fedssl.hub.server", name
