"""``fedssl-hub``: run the hub and manage it from the shell.

fedssl-hub serve --db sqlite:///hub.db --port 50051 --init-manager alice
fedssl-hub admin-key --db sqlite:///hub.db --owner bob        # operator: a manager key
export FEDSSL_HUB_KEY=fh_...  FEDSSL_HUB_ADDRESS=127.0.0.1:50051
fedssl-hub create mymodel --weights init.safetensors --builder '{"model": "mlp", "num_classes": 10}'
fedssl-hub status [mymodel]
fedssl-hub merge mymodel --base 1 --method avg --min 5
fedssl-hub keys create hospital-a
fedssl-hub keys revoke k_0123456789abcdef
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from fedssl.domains import Count, NonNegative, Port, Rate, Size, option

__all__ = ["main"]


def _client(args):
    from fedssl.hub.client import HubClient

    if not args.api_key:
        raise SystemExit("error: no API key: pass --api-key or set FEDSSL_HUB_KEY")
    return HubClient(args.address, args.api_key, root_cert=args.root_cert)


def cmd_serve(args) -> int:
    if args.print_config:
        import yaml

        settings = {k: v for k, v in vars(args).items() if k not in ("func", "print_config")}
        print(yaml.safe_dump(settings, sort_keys=False), end="")
        print("# the hub stores and merges weights; it trains nothing (no runtime section)")
        return 0
    from fedssl.hub.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server, port, store = serve(
        args.db,
        args.port,
        args.host,
        args.tls_cert,
        args.tls_key,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        blob_dir=args.blob_dir,
        fsync=not args.no_fsync,
    )
    if args.init_manager:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from fedssl.hub.store import KeyRow

        with Session(store.engine) as s:
            exists = s.scalar(
                select(KeyRow.id).where(
                    KeyRow.owner == args.init_manager,
                    KeyRow.role == "manager",
                    KeyRow.revoked_at.is_(None),
                )
            )
        if exists is None:
            secret, info = store.create_key("manager", args.init_manager)
            print(f"[hub] manager key for {args.init_manager} (shown once): {secret}", flush=True)
            if args.key_file:
                with open(args.key_file, "w") as f:
                    f.write(secret + "\n")
                os.chmod(args.key_file, 0o600)
        else:
            print(f"[hub] {args.init_manager} already has a manager key", flush=True)
    scheme = "TLS" if args.tls_cert else "plaintext"
    blobs = f"weights in {store.blobs.root}" if store.blobs else "weights in the database"
    print(f"[hub] serving on {args.host}:{port} ({scheme}), store {args.db}, {blobs}", flush=True)
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(f"{port}\n")

    def stop(*_):
        server.stop(grace=5)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()
    store.close()
    return 0


def cmd_admin_key(args) -> int:
    from fedssl.hub.store import Store

    store = Store(args.db)
    secret, info = store.create_key("manager", args.owner)
    print(f"manager key for {args.owner} (id {info.key_id}, shown once): {secret}")
    return 0


def cmd_gc(args) -> int:
    from fedssl.hub.store import Store

    store = Store(args.db, blob_dir=args.blob_dir)
    if store.blobs is None:
        print("this store keeps weights in the database: no blob files to collect")
        return 0
    n = store.collect_garbage(min_age_s=args.min_age_h * 3600)
    print(f"removed {n} unreferenced blob file(s) from {store.blobs.root}")
    return 0


def cmd_create(args) -> int:
    from safetensors.torch import load_file

    state = load_file(args.weights)
    with _client(args) as hub:
        info = hub.create_model(
            args.name,
            state,
            builder=json.loads(args.builder),
            recipe=json.loads(args.recipe),
            max_staleness=args.max_staleness,
        )
    print(f"created {info['name']} v{info['version']} ({info['weights_bytes']} bytes)")
    return 0


def cmd_status(args) -> int:
    with _client(args) as hub:
        if not args.name:
            for m in hub.list_models():
                print(
                    f"{m['name']}: v{m['latest_version']}, {m['pending_contributions']} pending, "
                    f"max staleness {m['max_staleness']}"
                )
            return 0
        m = hub.info(args.name)
        print(
            f"{m['name']} (owner {m['owner']}): v{m['latest_version']}, "
            f"{m['weights_bytes']} bytes, {m['pending_contributions']} pending"
        )
        for c in hub.contributions(args.name, args.base):
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(c["metrics"].items()))
            print(
                f"  #{c['id']} {c['participant']}: base v{c['base_version']}, "
                f"{c['num_examples']} examples, {c['status']}"
                + (f" -> v{c['merged_into']}" if c["merged_into"] else "")
                + (f" ({metrics})" if metrics else "")
            )
    return 0


def cmd_merge(args) -> int:
    with _client(args) as hub:
        base = args.base or hub.info(args.name)["latest_version"]
        info = hub.merge(args.name, base, args.method, args.min)
    print(
        f"{info['name']} v{info['version']}: merged {len(info['contribution_ids'])} "
        f"contributions ({info['num_examples']} examples, {info['merge_method']})"
    )
    return 0


def cmd_keys(args) -> int:
    with _client(args) as hub:
        if args.action == "create":
            k = hub.create_key(args.arg)
            print(f"participant key for {args.arg} (id {k['key_id']}, shown once): {k['api_key']}")
        else:
            done = hub.revoke_key(args.arg)
            print(f"{args.arg}: {'revoked' if done else 'was already revoked'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedssl-hub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the hub server")
    s.add_argument("--db", default="sqlite:///hub.db", help="SQLAlchemy URL")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=option(Port), default=50051, help="0: any free port")
    s.add_argument("--tls-cert", help="PEM certificate (with --tls-key: serve TLS)")
    s.add_argument("--tls-key", help="PEM private key")
    s.add_argument("--max-upload-mb", type=option(Rate), default=512.0)
    s.add_argument("--init-manager", metavar="NAME", help="make a manager key if NAME has none")
    s.add_argument("--key-file", help="also write that key here (mode 600)")
    s.add_argument("--port-file", help="write the bound port here once listening")
    blob_help = (
        "folder for weights files (default 'auto': <db>.blobs beside a SQLite file, in the "
        "database otherwise; 'none': always in the database)"
    )
    s.add_argument("--blob-dir", default="auto", help=blob_help)
    s.add_argument(
        "--no-fsync", action="store_true", help="do not flush blob files to disk (faster, unsafe)"
    )
    s.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and exit"
    )
    s.set_defaults(func=cmd_serve)

    g = sub.add_parser("gc", help="operator: delete blob files no version or contribution uses")
    g.add_argument("--db", default="sqlite:///hub.db")
    g.add_argument("--blob-dir", default="auto", help=blob_help)
    g.add_argument(
        "--min-age-h", type=option(NonNegative), default=1.0, help="spare younger files (hours)"
    )
    g.set_defaults(func=cmd_gc)

    a = sub.add_parser("admin-key", help="operator: create a manager key in the database")
    a.add_argument("--db", default="sqlite:///hub.db")
    a.add_argument("--owner", required=True)
    a.set_defaults(func=cmd_admin_key)

    def remote(sp):
        sp.add_argument(
            "--address", default=os.environ.get("FEDSSL_HUB_ADDRESS", "127.0.0.1:50051")
        )
        sp.add_argument("--api-key", default=os.environ.get("FEDSSL_HUB_KEY", ""))
        sp.add_argument("--root-cert", help="CA certificate (PEM) for a TLS hub")

    c = sub.add_parser("create", help="publish a model (manager)")
    remote(c)
    c.add_argument("name")
    c.add_argument("--weights", required=True, help="safetensors file of the initial weights")
    c.add_argument("--builder", default="{}", help='JSON, e.g. {"model": "mlp", "num_classes": 10}')
    c.add_argument("--recipe", default="{}", help="JSON training recipe for participants")
    c.add_argument("--max-staleness", type=option(Size), default=0)
    c.set_defaults(func=cmd_create)

    st = sub.add_parser("status", help="models, or one model and its contributions")
    remote(st)
    st.add_argument("name", nargs="?")
    st.add_argument("--base", type=option(Size), default=0, help="contributions to this version")
    st.set_defaults(func=cmd_status)

    m = sub.add_parser("merge", help="merge pending contributions into a new version (manager)")
    remote(m)
    m.add_argument("name")
    m.add_argument("--base", type=option(Size), default=0, help="default: the current version")
    m.add_argument("--method", default="avg")
    m.add_argument("--min", type=option(Count), default=1, help="minimum contributions")
    m.set_defaults(func=cmd_merge)

    k = sub.add_parser("keys", help="participant keys (manager)")
    remote(k)
    k.add_argument("action", choices=["create", "revoke"])
    k.add_argument("arg", help="participant name (create) or key id (revoke)")
    k.set_defaults(func=cmd_keys)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from fedssl.hub.errors import HubError

    try:
        return args.func(args)
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
