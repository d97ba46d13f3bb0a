"""The hub's gRPC server: authentication, roles, streaming uploads/downloads, validation.

    python launch/hub_server.py --db sqlite:///hub.db --port 50051 --init-manager alice
    fedssl-hub serve --db postgresql+psycopg://hub@localhost/hub --tls-cert c.pem --tls-key k.pem

Every call must carry an API key in the ``x-api-key`` metadata entry. Managers create models,
list contributions, merge and issue participant keys for their own models; participants pull
and contribute to the models of the manager that issued their key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent import futures

import grpc

from fedssl.hub import hub_pb2 as pb
from fedssl.hub import hub_pb2_grpc as rpc
from fedssl.hub import weights as W
from fedssl.hub.errors import (
    HubError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from fedssl.hub.store import KeyInfo, ModelMeta, Store

__all__ = ["HubService", "serve", "API_KEY_HEADER", "MAX_MESSAGE_BYTES"]

log = logging.getLogger("fedssl.hub")
API_KEY_HEADER = "x-api-key"
#: per-message limit both ways: chunks are 4 MiB, so 8 MiB leaves room for headers
MAX_MESSAGE_BYTES = 8 << 20
MANAGER_ONLY = {"CreateModel", "ListContributions", "Merge", "CreateKey", "RevokeKey"}


def _info(meta: ModelMeta) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=meta.name,
        owner=meta.owner,
        architecture_json=meta.architecture_json,
        recipe_json=meta.recipe_json,
        version=meta.version,
        latest_version=meta.latest_version,
        max_staleness=meta.max_staleness,
        weights_bytes=meta.weights_bytes,
        weights_sha256=meta.weights_sha256,
        parent_version=meta.parent_version,
        merge_method=meta.merge_method,
        contribution_ids=meta.contribution_ids,
        num_examples=meta.num_examples,
        pending_contributions=meta.pending_contributions,
    )


def _handled(call: str):
    """Authenticate the caller for ``call``, then run the method. A :class:`HubError` becomes
    its gRPC status, anything unexpected INTERNAL (and is logged): the server keeps serving.
    Server-streaming methods return an iterator, so their checks run before the first message."""

    def decorate(method):
        def wrapper(self, request, context):
            try:
                key = self._authenticate(context, call)
                return method(self, request, context, key)
            except HubError as err:
                log.info("%s refused: %s: %s", call, err.code.name, err)
                status = (err.code, str(err))
            except Exception as err:  # noqa: BLE001
                log.exception("%s failed", call)
                status = (grpc.StatusCode.INTERNAL, f"{call}: internal error: {err}")
            context.abort(*status)

        wrapper.__name__ = method.__name__
        wrapper.__doc__ = method.__doc__
        return wrapper

    return decorate


class _VersionCache:
    """The weights of recently pulled versions (versions never change, so entries never go
    stale), up to ``limit`` bytes, least recently used out first."""

    def __init__(self, limit: int):
        self.limit, self.size, self.items = limit, 0, OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            return None

    def put(self, key, data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = data
            self.size += len(data)
            while self.size > self.limit:
                _, old = self.items.popitem(last=False)
                self.size -= len(old)


class HubService(rpc.HubServicer):
    """The gRPC servicer over a :class:`Store`.

    Args:
        store: the SQL store.
        max_upload_bytes: server-wide upload limit (a model may set a lower one).
        cache_bytes: memory for the weights of recently pulled versions.
    """

    def __init__(
        self, store: Store, max_upload_bytes: int | None = None, cache_bytes: int = 1 << 30
    ):
        self.store = store
        self.max_upload_bytes = max_upload_bytes or store.max_upload_bytes
        self.cache = _VersionCache(cache_bytes)

    # ------------------------------------------------------------------ auth

    def _authenticate(self, context, call: str) -> KeyInfo:
        md = dict(context.invocation_metadata() or ())
        secret = md.get(API_KEY_HEADER, "")
        if not secret:
            raise Unauthenticated(f"{call}: no API key (send it in the {API_KEY_HEADER!r} header)")
        key = self.store.authenticate(secret)
        if key is None:
            raise Unauthenticated(f"{call}: unknown or revoked API key")
        if call in MANAGER_ONLY and key.role != "manager":
            raise PermissionDenied(f"{call} needs a manager key; this is a {key.role} key")
        return key

    @staticmethod
    def _may_use(key: KeyInfo, meta: ModelMeta) -> None:
        if meta.owner != key.owner:
            raise PermissionDenied(f"model {meta.name!r} belongs to another manager")

    def _model(self, key: KeyInfo, name: str, version: int = 0) -> ModelMeta:
        meta = self.store.model(name, version)
        self._may_use(key, meta)
        return meta

    # ------------------------------------------------------------------ uploads

    @staticmethod
    def _first(request_iterator, what: str):
        """The first message of an upload (it must carry the header) and the rest."""
        it = iter(request_iterator)
        first = next(it, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument(f"{what}: the first message must carry the header")
        return first, it

    @staticmethod
    def _body(first, rest, what: str, limit: int) -> tuple[bytearray, str]:
        """The upload's bytes and their SHA-256 (hashed while receiving); refused past
        ``limit`` while receiving, before anything is stored."""

        def pieces():
            yield first.data
            for chunk in rest:
                if chunk.HasField("header"):
                    raise InvalidArgument(f"{what}: only the first message may carry a header")
                yield chunk.data

        digest = hashlib.sha256()
        try:
            return W.join(pieces(), limit, digest), digest.hexdigest()
        except W.WeightsError as err:
            raise InvalidArgument(f"{what}: {err}") from None

    @_handled("CreateModel")
    def CreateModel(self, request_iterator, context, key):  # noqa: N802 - gRPC's names
        first, rest = self._first(request_iterator, "CreateModel")
        h = first.header
        data, sha = self._body(first, rest, "CreateModel", self.max_upload_bytes)
        try:
            builder = json.loads(h.architecture_json or "{}").get("builder", {})
            recipe = json.loads(h.recipe_json or "{}")
        except (json.JSONDecodeError, AttributeError) as err:
            raise InvalidArgument(f"CreateModel: architecture/recipe is not JSON: {err}") from None
        if not isinstance(recipe, dict) or not isinstance(builder, dict):
            raise InvalidArgument("CreateModel: architecture and recipe must be JSON objects")
        try:
            meta = self.store.create_model(
                h.name,
                key.owner,
                data,
                builder=builder,
                recipe=recipe,
                max_staleness=h.max_staleness,
                max_upload_bytes=h.max_upload_bytes,
                sha256=sha,
            )
        except W.WeightsError as err:
            raise InvalidArgument(f"CreateModel: {err}") from None
        log.info("model %r created by %s (%d bytes)", h.name, key.owner, len(data))
        return _info(meta)

    @_handled("Contribute")
    def Contribute(self, request_iterator, context, key):  # noqa: N802
        first, rest = self._first(request_iterator, "Contribute")
        h = first.header
        meta = self._model(key, h.name)  # unknown model / other manager: refused before reading
        if h.num_examples <= 0:
            raise InvalidArgument(f"Contribute: num_examples must be > 0, got {h.num_examples}")
        if not 1 <= h.base_version <= meta.latest_version:  # refused before reading the weights
            raise InvalidArgument(
                f"Contribute: base version {h.base_version} of {h.name!r} does not exist "
                f"(latest: {meta.latest_version})"
            )
        for k, v in h.metrics.items():
            if v != v or v in (float("inf"), float("-inf")):
                raise InvalidArgument(f"Contribute: metric {k!r} is not finite")

        data, sha = self._body(first, rest, "Contribute", meta.max_upload_bytes)
        # the file is written and flushed while the tensors are checked; a refused upload's
        # temporary file is removed, so nothing is stored
        staged = self.store.stage_blob(data, sha)
        try:
            state = W.decode(data)
            W.validate(state, meta.spec)
        except BaseException as err:
            if staged is not None:
                staged.discard()
            if isinstance(err, W.WeightsError):
                raise InvalidArgument(f"Contribute: {err}") from None
            raise
        out = self.store.add_contribution(
            h.name, key, h.base_version, h.num_examples, dict(h.metrics), data, sha256=sha,
            staged=staged,
        )  # fmt: skip
        log.info(
            "contribution %d to %r v%d from %s: %s%s",
            out["id"],
            h.name,
            h.base_version,
            key.participant,
            out["status"],
            " (replaced)" if out["replaced"] else "",
        )
        return pb.ContributeReply(
            contribution_id=out["id"],
            status=out["status"],
            replaced=out["replaced"],
            latest_version=out["latest_version"],
            message=out["message"],
        )

    # ------------------------------------------------------------------ reads

    @_handled("ListModels")
    def ListModels(self, request, context, key):  # noqa: N802
        return pb.ListModelsReply(models=[_info(m) for m in self.store.list_models(key.owner)])

    @_handled("GetModelInfo")
    def GetModelInfo(self, request, context, key):  # noqa: N802
        return _info(self._model(key, request.name, request.version))

    @_handled("GetModel")
    def GetModel(self, request, context, key) -> Iterator[pb.ModelChunk]:  # noqa: N802
        meta = self._model(key, request.name, request.version)
        ckey = (meta.name, meta.version, meta.weights_sha256)
        data = self.cache.get(ckey)
        if data is None:
            meta, data = self.store.weights(request.name, meta.version, meta=meta)
            self.cache.put(ckey, data)

        def stream():
            yield pb.ModelChunk(info=_info(meta))
            for c in W.chunked(data):
                yield pb.ModelChunk(data=c)

        return stream()

    @_handled("ListContributions")
    def ListContributions(self, request, context, key):  # noqa: N802
        self._model(key, request.name)
        rows = self.store.contributions(request.name, request.base_version)
        return pb.ListContributionsReply(
            contributions=[
                pb.Contribution(
                    id=r.id,
                    participant=r.participant,
                    base_version=r.base_version,
                    num_examples=r.num_examples,
                    metrics=r.metrics,
                    status=r.status,
                    merged_into=r.merged_into,
                    weights_bytes=r.weights_bytes,
                    created_at=r.created_at,
                )
                for r in rows
            ]
        )

    # ------------------------------------------------------------------ manager

    @_handled("Merge")
    def Merge(self, request, context, key):  # noqa: N802
        from fedssl.aggregation import METHODS

        self._model(key, request.name)
        method = request.method or "avg"
        if method not in METHODS and not method.startswith("trimmed_mean("):
            raise InvalidArgument(f"Merge: unknown method {method!r}; choose one of {METHODS}")
        meta = self.store.merge(
            request.name, request.base_version, method, max(1, request.min_contributions)
        )
        log.info(
            "%r v%d merged from %d contributions (%s)",
            meta.name,
            meta.version,
            len(meta.contribution_ids),
            method,
        )
        return _info(meta)

    @_handled("CreateKey")
    def CreateKey(self, request, context, key):  # noqa: N802
        role = request.role or "participant"
        if role != "participant":
            raise PermissionDenied(
                "managers issue participant keys; manager keys are made by the hub's operator "
                "(fedssl-hub serve --init-manager NAME, or fedssl-hub admin-key)"
            )
        if not request.participant or len(request.participant) > 128:
            raise InvalidArgument("CreateKey: a participant name of 1-128 characters is needed")
        secret, info = self.store.create_key(
            "participant", key.owner, request.participant, issued_by=key.key_id
        )
        return pb.CreateKeyReply(api_key=secret, key_id=info.key_id, role=role, owner=key.owner)

    @_handled("RevokeKey")
    def RevokeKey(self, request, context, key):  # noqa: N802
        return pb.RevokeKeyReply(revoked=self.store.revoke_key(request.key_id, key))


def serve(
    db: str = "sqlite:///hub.db",
    port: int = 50051,
    host: str = "127.0.0.1",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_upload_bytes: int = 512 << 20,
    workers: int = 32,
    blob_dir: str | None = "auto",
    fsync: bool = True,
) -> tuple[grpc.Server, int, Store]:
    """Start the hub (non-blocking). Returns ``(server, bound_port, store)``; call
    ``server.wait_for_termination()`` to block, ``server.stop(grace)`` to stop. ``blob_dir``
    and ``fsync``: where weights files go (see :class:`fedssl.hub.store.Store`)."""
    store = Store(db, max_upload_bytes=max_upload_bytes, blob_dir=blob_dir, fsync=fsync)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    rpc.add_HubServicer_to_server(HubService(store, max_upload_bytes), server)
    address = f"{host}:{port}"
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        with open(tls_key, "rb") as k, open(tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, bound, store
