"""Run Flower's SuperNode with short polls (fedssl.federation.supernode).

    python launch/supernode.py --poll-s 0.1 -- --superlink link.example.org:8000 \\
        --root-certificates certs/ca.crt --auth-supernode-private-key site0_key \\
        --node-config "partition-id=0 worker='/run/fedssl/site0.sock'"

Everything after ``--`` goes to ``flower-supernode`` unchanged. Flower's SuperNode waits 3 s
between its looks for a message when there is none, and a federated round meets it asleep with
every message; this runs the same SuperNode with its waits capped at ``--poll-s`` seconds
(docs/how-to-deploy.md, "Short polls").
"""

from __future__ import annotations

import argparse
import sys

from fedssl.domains import option
from fedssl.federation.supernode import POLL_RANGE, POLL_S, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--poll-s S] -- FLOWER_SUPERNODE_ARGS...",
    )
    p.add_argument(
        "--poll-s",
        type=option(POLL_RANGE),
        default=POLL_S,
        help="longest wait between the SuperNode's looks for messages and replies, in seconds, "
        "0.01-3 (default %(default)s; Flower's own: 3)",
    )
    p.add_argument("supernode_args", nargs=argparse.REMAINDER, help="flower-supernode's flags")
    args = p.parse_args(argv)
    rest = args.supernode_args[1:] if args.supernode_args[:1] == ["--"] else args.supernode_args
    run(rest, args.poll_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
