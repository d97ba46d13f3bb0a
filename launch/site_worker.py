"""Run a site's long-lived fedssl worker beside its SuperNode (Flower's deployment engine).

    python launch/site_worker.py --socket /run/fedssl/site0.sock &
    flower-supernode ... --node-config "partition-id=0 worker='/run/fedssl/site0.sock'"

The SuperNode's ClientApp then relays every message to this process, which keeps torch, the
client's data and its decoded images across rounds (fedssl.federation.site_worker;
docs/how-to-deploy.md, "A worker per site"). Stop it with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys

from fedssl.domains import Count, option
from fedssl.federation.site_worker import serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="path of the Unix socket to serve on")
    p.add_argument(
        "--max-messages",
        type=option(Count),
        default=None,
        help="stop after answering this many (tests)",
    )
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # cleans up the socket and key
    try:
        serve(args.socket, args.max_messages)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
