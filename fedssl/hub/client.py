"""Python API of the hub for participants and managers.

Participant::

    hub = HubClient("127.0.0.1:50051", api_key)
    state, version = hub.pull("fmnist-cnn")              # or as_module=True: a LightningModule
    ...train on your data...
    hub.push("fmnist-cnn", version, state, num_examples=6400, metrics={"loss": 0.31})

Manager (a manager key)::

    hub.create_model("fmnist-cnn", state, builder={"model": "paper_cnn", "num_classes": 10})
    key = hub.create_key("hospital-a")["api_key"]      # give it to the participant
    hub.merge("fmnist-cnn", base_version=1, method="avg", min_contributions=5)

Errors arrive as :mod:`fedssl.hub.errors` exceptions (``NotFound``, ``PermissionDenied``, ...),
each with the gRPC ``code`` the server answered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping

import grpc
import torch

from fedssl.hub import errors as E
from fedssl.hub import hub_pb2 as pb
from fedssl.hub import hub_pb2_grpc as rpc
from fedssl.hub import weights as W
from fedssl.hub.server import API_KEY_HEADER, MAX_MESSAGE_BYTES

__all__ = ["HubClient", "HubUnavailable", "info_dict", "build_module"]


class HubUnavailable(E.HubError):
    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE = {
    c.code: c
    for c in (
        E.NotFound,
        E.AlreadyExists,
        E.FailedPrecondition,
        E.PermissionDenied,
        E.InvalidArgument,
        E.Unauthenticated,
        E.DataLoss,
        HubUnavailable,
    )
}


def _raise(err: grpc.RpcError):
    code = err.code()
    cls = _BY_CODE.get(code, E.HubError)
    out = cls(f"{code.name}: {err.details()}")
    out.code = code
    raise out from None


def info_dict(info: pb.ModelInfo) -> dict:
    """A :class:`ModelInfo` message as a plain dict (JSON fields parsed)."""
    return {
        "name": info.name,
        "owner": info.owner,
        "architecture": json.loads(info.architecture_json or "{}"),
        "recipe": json.loads(info.recipe_json or "{}"),
        "version": info.version,
        "latest_version": info.latest_version,
        "max_staleness": info.max_staleness,
        "weights_bytes": info.weights_bytes,
        "weights_sha256": info.weights_sha256,
        "parent_version": info.parent_version,
        "merge_method": info.merge_method,
        "contribution_ids": list(info.contribution_ids),
        "num_examples": info.num_examples,
        "pending_contributions": info.pending_contributions,
    }


def build_module(builder: Mapping, state: Mapping[str, torch.Tensor]):
    """A Lightning classifier from a model's ``builder`` description, with ``state`` loaded.

    Supported builders: ``{"model": "paper_cnn" | "mlp", "num_classes": N, ...}`` (the keyword
    arguments of :func:`fedssl.models.small.build_small_model`).
    """
    from fedssl.methods.supervised import Classifier
    from fedssl.models.small import build_small_model

    args = dict(builder)
    name = args.pop("model", None)
    if name is None:
        raise ValueError("this model was published without a builder: pull it as a state dict")
    net = build_small_model(name, **args)
    net.load_state_dict(dict(state), strict=True)
    return Classifier(net)


class HubClient:
    """One connection to a hub.

    Args:
        address: ``host:port``.
        api_key: the key the manager (or the operator) gave you.
        root_cert: PEM file of the CA that signed the server's certificate (TLS); None = plain.
        timeout: seconds per call.
    """

    def __init__(
        self,
        address: str,
        api_key: str,
        root_cert: str | None = None,
        timeout: float = 300.0,
    ):
        opts = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if root_cert:
            with open(root_cert, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(address, options=opts)
        self.stub = rpc.HubStub(self.channel)
        self.metadata = ((API_KEY_HEADER, api_key),) if api_key else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            _raise(err)

    # ------------------------------------------------------------------ participants

    def list_models(self) -> list[dict]:
        return [
            info_dict(m) for m in self._call(self.stub.ListModels, pb.ListModelsRequest()).models
        ]

    def info(self, name: str, version: int = 0) -> dict:
        """Metadata of ``name`` at ``version`` (0: latest), without weights."""
        return info_dict(
            self._call(self.stub.GetModelInfo, pb.GetModelRequest(name=name, version=version))
        )

    def pull_bytes(self, name: str, version: int = 0) -> tuple[dict, bytearray]:
        """``(info, safetensors bytes)`` of a version; the bytes are checked against its sha256."""
        try:
            stream = self.stub.GetModel(
                pb.GetModelRequest(name=name, version=version),
                metadata=self.metadata,
                timeout=self.timeout,
            )
            info, parts, digest = None, [], hashlib.sha256()
            for chunk in stream:
                if chunk.HasField("info"):
                    info = info_dict(chunk.info)
                if chunk.data:
                    digest.update(chunk.data)  # while the next chunk arrives
                    parts.append(chunk.data)
        except grpc.RpcError as err:
            _raise(err)
        if info is None:
            raise E.HubError(f"GetModel {name!r}: the reply carried no model info")
        if digest.hexdigest() != info["weights_sha256"]:
            raise E.HubError(f"GetModel {name!r}: weights arrived corrupted (sha256 mismatch)")
        data = bytearray().join(parts)  # a bytearray: decode() then needs no further copy
        return info, data

    def pull(self, name: str, version: int = 0, as_module: bool = False):
        """``(state_dict, version)``, or ``(LightningModule, version)`` with ``as_module``."""
        info, data = self.pull_bytes(name, version)
        state = W.decode(data)
        if as_module:
            return build_module(info["architecture"].get("builder", {}), state), info["version"]
        return state, info["version"]

    def push(
        self,
        name: str,
        base_version: int,
        state: Mapping[str, torch.Tensor],
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> dict:
        """Upload a contribution trained from ``base_version``. Returns ``{"id", "status"
        ("pending" or "stale"), "replaced", "latest_version", "message"}``."""
        if hasattr(state, "state_dict") and callable(state.state_dict):
            state = _net_state(state)
        return self._push(name, base_version, W.encode_chunks(state), num_examples, metrics)

    def push_bytes(
        self,
        name: str,
        base_version: int,
        data: bytes,
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> dict:
        """Upload already-encoded safetensors bytes (see :meth:`push`)."""
        return self._push(name, base_version, W.chunked(data), num_examples, metrics)

    def _push(self, name, base_version, chunks: Iterator[bytes], num_examples, metrics) -> dict:
        header = pb.ContributionHeader(
            name=name,
            base_version=base_version,
            num_examples=num_examples,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
        )
        reply = self._stream_call(self.stub.Contribute, pb.ContributionChunk, header, chunks)
        return {
            "id": reply.contribution_id,
            "status": reply.status,
            "replaced": reply.replaced,
            "latest_version": reply.latest_version,
            "message": reply.message,
        }

    def _stream_call(self, method, chunk_cls, header, chunks: Iterator[bytes]):
        """A client-streaming call: the header rides on the first chunk; the chunks are made
        while earlier ones are sent."""

        def messages() -> Iterator:
            it = iter(chunks)
            yield chunk_cls(header=header, data=next(it, b""))
            for p in it:
                yield chunk_cls(data=p)

        try:
            return method(messages(), metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            _raise(err)

    # ------------------------------------------------------------------ managers

    def create_model(
        self,
        name: str,
        state: Mapping[str, torch.Tensor],
        builder: Mapping | None = None,
        recipe: Mapping | None = None,
        max_staleness: int = 0,
        max_upload_bytes: int = 0,
    ) -> dict:
        """Publish ``state`` as version 1 of ``name`` (manager key)."""
        header = pb.CreateModelHeader(
            name=name,
            architecture_json=json.dumps({"builder": dict(builder or {})}),
            recipe_json=json.dumps(dict(recipe or {})),
            max_staleness=max_staleness,
            max_upload_bytes=max_upload_bytes,
        )
        reply = self._stream_call(
            self.stub.CreateModel, pb.CreateModelChunk, header, W.encode_chunks(state)
        )
        return info_dict(reply)

    def contributions(self, name: str, base_version: int = 0) -> list[dict]:
        reply = self._call(
            self.stub.ListContributions,
            pb.ListContributionsRequest(name=name, base_version=base_version),
        )
        return [
            {
                "id": c.id,
                "participant": c.participant,
                "base_version": c.base_version,
                "num_examples": c.num_examples,
                "metrics": dict(c.metrics),
                "status": c.status,
                "merged_into": c.merged_into,
                "weights_bytes": c.weights_bytes,
                "created_at": c.created_at,
            }
            for c in reply.contributions
        ]

    def merge(
        self, name: str, base_version: int, method: str = "avg", min_contributions: int = 1
    ) -> dict:
        """Merge the pending contributions to ``base_version`` into a new version."""
        req = pb.MergeRequest(
            name=name, base_version=base_version, method=method, min_contributions=min_contributions
        )
        return info_dict(self._call(self.stub.Merge, req))

    def create_key(self, participant: str) -> dict:
        """A participant key for your models: ``{"api_key", "key_id", "role", "owner"}``."""
        r = self._call(self.stub.CreateKey, pb.CreateKeyRequest(participant=participant))
        return {"api_key": r.api_key, "key_id": r.key_id, "role": r.role, "owner": r.owner}

    def revoke_key(self, key_id: str) -> bool:
        return self._call(self.stub.RevokeKey, pb.RevokeKeyRequest(key_id=key_id)).revoked


def _net_state(module) -> dict[str, torch.Tensor]:
    """The network's own state dict from a fedssl Lightning classifier (or any module)."""
    net = getattr(module, "net", module)
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
