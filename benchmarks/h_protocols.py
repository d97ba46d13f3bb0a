"""Fast exploration of H-environment FedAvg protocol choices, without Flower.

A plain-PyTorch replica of the two-client H-environment loop (labels 0-4 / 5-9; the network and
data protocol of ``configs/merge/tuned-h.yaml``): each round both clients run ``--steps`` SGD
mini-batches of 64 from the global weights and the server averages them, optionally through
server momentum (FedAvgM) or with SCAFFOLD control variates. Same data and model code as fedssl,
none of Flower's per-round cost, so a 10-epoch protocol takes ~10 min on one core. The chosen
protocol then runs for real through Flower (``configs/merge/tuned-h.yaml``); see
docs/results/merge.md. The learning rate decays by ``--decay`` per 25 local steps.

    python benchmarks/h_protocols.py                             # every 25 steps, momentum 0.9
    python benchmarks/h_protocols.py --keepmom                   # momentum kept across rounds
    python benchmarks/h_protocols.py --scaffold                  # SCAFFOLD control variates
    python benchmarks/h_protocols.py --mom 0 --server-mom 0.9    # FedAvgM
    python benchmarks/h_protocols.py --steps 5 --mom 0 --server-mom 0.9 --eval 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# isort: off
import fedssl  # noqa: E402,F401  (before torch)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# isort: on

from fedssl.config import load_config  # noqa: E402
from fedssl.data.clients import client_tensors, server_test_tensors  # noqa: E402
from fedssl.federation.classification import build_model  # noqa: E402
from fedssl.models.classifier import Classifier, accuracy  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--env", choices=["h", "v"], default="h")
    p.add_argument("--steps", type=int, default=25, help="local mini-batches per round")
    p.add_argument("--epochs", type=float, default=10, help="local epochs in total per client")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--mom", type=float, default=0.9, help="client SGD momentum")
    p.add_argument("--decay", type=float, default=0.99, help="lr factor per 25 local steps")
    p.add_argument("--scaffold", action="store_true", help="SCAFFOLD control variates")
    p.add_argument("--keepmom", action="store_true", help="keep client momentum across rounds")
    p.add_argument("--aug", default="flip_shift")
    p.add_argument("--eval", type=int, default=40, help="evaluate every N rounds")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--server-mom", type=float, default=0.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(1)
    ov = [] if a.env == "h" else ["data.partition=iid"]
    cfg = load_config(ROOT / "configs" / "merge" / "tuned-h.yaml", ov)
    torch.manual_seed(0)
    glob = build_model(cfg)
    data = [client_tensors(cfg.data, i)["train"] for i in range(2)]
    tx, ty = server_test_tensors(cfg.data)
    nets = [build_model(cfg) for _ in range(2)]
    aug = Classifier(build_model(cfg), augment=a.aug)
    names = [n for n, _ in glob.named_parameters()]
    c = {n: torch.zeros_like(p) for n, p in glob.named_parameters()}
    ci = [{n: torch.zeros_like(c[n]) for n in names} for _ in range(2)]
    moms: list[list[torch.Tensor] | None] = [None, None]
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    perm = [torch.randperm(len(d[1]), generator=g) for d, g in zip(data, gens, strict=True)]
    pos = [0, 0]
    vel: dict[str, torch.Tensor] = {}
    rounds = int(a.epochs * len(data[0][1]) / 64 / a.steps)
    t0 = time.time()
    for r in range(1, rounds + 1):
        lr = a.lr * a.decay ** ((r - 1) * a.steps / 25)
        states, newc = [], []
        for i in range(2):
            net = nets[i]
            net.load_state_dict(glob.state_dict())
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=a.mom)
            if a.keepmom and moms[i] is not None:
                for p, b in zip(net.parameters(), moms[i], strict=True):
                    opt.state[p]["momentum_buffer"] = b
            gsum = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
            x, y = data[i]
            for _ in range(a.steps):
                if pos[i] + 64 > len(y):
                    perm[i], pos[i] = torch.randperm(len(y), generator=gens[i]), 0
                idx = perm[i][pos[i] : pos[i] + 64]
                pos[i] += 64
                loss = F.cross_entropy(net(aug._augmented(x[idx])), y[idx])
                opt.zero_grad()
                loss.backward()
                for n, p in net.named_parameters():
                    gsum[n] += p.grad
                    if a.scaffold:
                        p.grad += c[n] - ci[i][n]
                opt.step()
            if a.keepmom:
                moms[i] = [opt.state[p]["momentum_buffer"] for p in net.parameters()]
            states.append({k: v.clone() for k, v in net.state_dict().items()})
            newc.append({n: g / a.steps for n, g in gsum.items()})
        g = glob.state_dict()
        new = {}
        for k in g:
            avg = (states[0][k] + states[1][k]) / 2
            if not g[k].is_floating_point():
                new[k] = states[0][k]
                continue
            vel[k] = a.server_mom * vel[k] + (avg - g[k]) if k in vel else avg - g[k]
            new[k] = g[k] + a.server_lr * vel[k]
        glob.load_state_dict(new)
        if a.scaffold:
            ci = newc
            c = {n: (ci[0][n] + ci[1][n]) / 2 for n in c}
        if r % a.eval == 0 or r == rounds:
            acc = accuracy(glob, tx, ty)
            print(f"round {r}/{rounds} acc {acc:.4f} t {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
