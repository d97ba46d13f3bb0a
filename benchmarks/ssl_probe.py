"""Quick SimCLR recipe probe (stage one, paper 003): centralized SimCLR on the clients' unlabeled
images for a few epochs, then each client's kNN accuracy — a cheap way to compare settings before
a full federated run.

    python benchmarks/ssl_probe.py 4                          # the default recipe, 4 epochs
    python benchmarks/ssl_probe.py 4 ssl.temperature=0.2      # one override (config keys)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from fedssl.config import load_config
    from fedssl.federation.pretraining import pretrain_centralized

    if not argv or not argv[0].isdigit():
        print(__doc__)
        return 2
    epochs, overrides = int(argv[0]), argv[1:]
    cfg = load_config(
        ROOT / "configs" / "pretrain" / "default.yaml",
        ["tracking.wandb=disabled", "train.threads=2", *overrides],
    )
    cfg.federation.rounds = epochs
    t = time.perf_counter()
    out = pretrain_centralized(cfg, epochs)
    shown = {k: round(v, 4) for k, v in out.items()}
    print(f"[probe] {' '.join(overrides) or 'defaults'}, {epochs} epochs: {json.dumps(shown)} "
          f"({time.perf_counter() - t:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
