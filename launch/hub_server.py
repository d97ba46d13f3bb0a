"""Run the crowd-sourcing hub (paper 002): gRPC + SQL. Same as ``fedssl-hub serve``.

    python launch/hub_server.py                                   # sqlite:///hub.db, port 50051
    python launch/hub_server.py --db postgresql+psycopg://hub@localhost/hub --port 50051
    python launch/hub_server.py --init-manager alice              # prints alice's manager key once
    python launch/hub_server.py --tls-cert server.pem --tls-key server.key

See docs/how-to-hub.md for a manager's and a participant's first steps.
"""

from __future__ import annotations

import sys

from fedssl.hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
