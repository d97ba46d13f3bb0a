"""Hub benchmarks (issue "crowd-sourcing hub"): transfer throughput, merge latency, request rate,
and the crowd-sourcing experiment. Writes ``docs/results/hub.md`` (results are kept in
``docs/results/hub.json``, so one section can be re-run without losing the others).

    python benchmarks/hub.py throughput     # ResNet-50 up/down over loopback vs raw safetensors
    python benchmarks/hub.py merge          # 10 ResNet-50 contributions: hub merge vs merge()
    python benchmarks/hub.py requests       # GetModelInfo calls/s with 20 concurrent clients
    python benchmarks/hub.py crowdsource    # python launch/crowdsource.py, its table
    python benchmarks/hub.py all

The hub runs as its own process (``launch/hub_server.py``, SQLite store in a temporary folder);
clients run in this process. Every figure is measured in the same run as its reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "docs" / "results" / "hub.json"
PAGE = ROOT / "docs" / "results" / "hub.md"
MB = 1e6


def resnet50_state(seed: int = 0):
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model("resnet50", pretrained=False).state_dict()


class Server:
    def __init__(self):
        from fedssl.hub.process import start_server_process

        self.dir = tempfile.TemporaryDirectory(prefix="fedssl-hub-bench-")
        db = f"sqlite:///{Path(self.dir.name) / 'hub.db'}"
        self.proc, self.address, self.key = start_server_process(db, self.dir.name)

    def client(self, key=None):
        from fedssl.hub.client import HubClient

        return HubClient(self.address, key or self.key)

    def close(self):
        from fedssl.hub.process import stop_server_process

        stop_server_process(self.proc)
        self.dir.cleanup()


def throughput(repeats: int) -> dict:
    from safetensors.torch import load, save

    from fedssl.hub import weights as W

    state = resnet50_state()
    data = save(state)
    size = len(data) / MB
    ours = W.encode(state)
    srv = Server()
    try:
        m = srv.client()
        t = time.perf_counter()
        m.create_model("r50", state)
        create_s = time.perf_counter() - t
        p = srv.client(m.create_key("bench")["api_key"])
        s = harness.interleaved(
            {
                # the reference: the safetensors library, in memory
                "encode": lambda: save(state),
                "decode": lambda: load(data),
                # the hub's own codec (fedssl.hub.weights), for the record
                "codec_encode": lambda: W.encode(state),
                "codec_decode": lambda: W.decode(bytearray(ours)),
                "upload": lambda: p.push("r50", 1, state, 100),
                "download": lambda: p.pull("r50"),
            },
            repeats,
        )
    finally:
        srv.close()
    out = {"mb": size, "repeats": repeats, "create_mb_s": size / create_s}
    out.update({f"{k}_mb_s": size / v for k, v in s.items()})
    out["upload_vs_encode"] = out["upload_mb_s"] / out["encode_mb_s"]
    out["download_vs_encode"] = out["download_mb_s"] / out["encode_mb_s"]
    out["download_vs_decode"] = out["download_mb_s"] / out["decode_mb_s"]
    print(f"[hub] throughput: {json.dumps({k: round(v, 3) for k, v in out.items()})}", flush=True)
    return out


def merge_latency(n: int) -> dict:
    import torch

    from fedssl.aggregation import merge

    states = [resnet50_state(seed) for seed in range(n)]
    for s in states:  # make BatchNorm counters equal-typed, as trained models are
        for k, v in s.items():
            if not v.is_floating_point():
                s[k] = torch.zeros_like(v)
    counts = [100 + i for i in range(n)]
    plain_s = harness.median_time(lambda: merge(states, "avg", weights=counts), 3)
    srv = Server()
    try:
        m = srv.client()
        m.create_model("r50", states[0])
        for i, s in enumerate(states):
            with srv.client(m.create_key(f"p{i}")["api_key"]) as p:
                p.push("r50", 1, s, counts[i])
        t = time.perf_counter()
        info = m.merge("r50", 1, "avg", min_contributions=n)
        hub_s = time.perf_counter() - t
        assert len(info["contribution_ids"]) == n
    finally:
        srv.close()
    out = {"n": n, "merge_s": plain_s, "hub_merge_s": hub_s, "ratio": hub_s / plain_s}
    print(f"[hub] merge: {out}", flush=True)
    return out


def requests_rate(clients: int, seconds: float) -> dict:
    import torch

    srv = Server()
    try:
        m = srv.client()
        m.create_model("small", {"w": torch.zeros(1000)})
        keys = [m.create_key(f"c{i}")["api_key"] for i in range(clients)]
        counts, errors = [0] * clients, []
        start = threading.Barrier(clients + 1)
        stop = threading.Event()

        def worker(i):
            with srv.client(keys[i]) as c:
                c.info("small")  # connect before the clock starts
                start.wait()
                while not stop.is_set():
                    try:
                        c.info("small")
                        counts[i] += 1
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        errors.append(repr(err))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        srv.close()
    out = {"clients": clients, "seconds": elapsed, "calls": sum(counts),
           "calls_per_s": sum(counts) / elapsed, "errors": len(errors)}  # fmt: skip
    print(f"[hub] requests: {out}", flush=True)
    return out


def crowdsource(extra: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "launch" / "crowdsource.py"), *extra]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    name = extra[extra.index("--name") + 1] if "--name" in extra else "crowdsource"
    out_dir = extra[extra.index("--out-dir") + 1] if "--out-dir" in extra else "runs"
    res = json.loads((ROOT / out_dir / name / "crowdsource.json").read_text())
    shown = " ".join(["python launch/crowdsource.py", *extra])
    return {"command": shown, "wall_s": wall, **res}


def render(res: dict) -> str:
    env = res.get("_env", {})
    out = [
        "# The crowd-sourcing hub (paper 002)",
        "",
        f"Machine: {env.get('machine', '?')}. Generated by `python benchmarks/hub.py <section>`; "
        "the hub runs as its own process (`launch/hub_server.py`, SQLite store), clients in the "
        "benchmark's process, over loopback without TLS.",
        "",
    ]
    if "crowdsource" in res:
        r = res["crowdsource"]
        a = r["args"]
        hist = r["history"]
        out += [
            "## Crowd-sourced training vs centralized (paper 002's scenario)",
            "",
            f"Command: `{r['command']}` ({r['date']}, {r['wall_s']:.0f} s). {a['participants']} "
            f"participants: half with Fashion-MNIST (labels 0-9), half with **MNIST** (labels "
            "10-19) — the paper used CIFAR-10 for the second half, which is not available "
            f"offline. Each round every participant samples {a['per_round']} images of its own "
            f"dataset, trains {a['epochs']} local epoch(s) ({a['model']}, SGD lr {a['lr']}, "
            f"momentum {a['momentum']}, batch {a['batch_size']}) and pushes; the manager merges "
            "(FedAvg weighted by examples) once all have contributed. Centralized = the same "
            "network trained on each round's pooled images, same epochs and optimizer. Test set: "
            "Fashion-MNIST's 10,000 + the MNIST subset's 714 test images (20 classes).",
            "",
        ]
        out += [f"Note: {n}." for n in r.get("notes", [])] + [""]
        out += [
            "| version | hub, 20 classes | Fashion-MNIST part | MNIST part | centralized, same "
            "images | gap (points) | merge s |",
            "|---|---|---|---|---|---|---|",
        ]
        for h in hist:
            gap = 100 * (h.get("central_acc", h["acc"]) - h["acc"])
            out.append(
                f"| {h['version']} | {100 * h['acc']:.2f} | {100 * h['acc_fashion_mnist']:.2f} | "
                f"{100 * h['acc_mnist']:.2f} | {100 * h.get('central_acc', float('nan')):.2f} | "
                f"{gap:+.2f} | {h.get('merge_s', 0):.2f} |"
            )
        last = hist[-1]
        gap = 100 * (last["central_acc"] - last["acc"])
        verdict = "within" if abs(gap) <= 1.0 else "**not** within"
        out += [
            "",
            "Paper 002: the crowd-sourced model within 1% of centralized training. Here, final "
            f"version v{last['version']}: {100 * last['acc']:.2f} vs "
            f"{100 * last['central_acc']:.2f} — {verdict} 1 point ({gap:+.2f}).",
            "",
        ]
    if "throughput" in res:
        r = res["throughput"]
        out += [
            "## Transfer throughput, ResNet-50 state dict",
            "",
            f"Command: `python benchmarks/hub.py throughput` ({r['date']}). {r['mb']:.1f} MB of "
            "safetensors (timm `resnet50`, random weights). Upload = `HubClient.push` end to end "
            "(encoded while it is sent in 1 MiB chunks over gRPC; the server hashes while "
            "receiving, then writes and flushes the blob file while it decodes and validates "
            "every tensor, then the row); download = `HubClient.pull` (read, stream, sha256 "
            "check, decode). Reference: the `safetensors` library "
            "serialising the same state dict in memory (`safetensors.torch.save`); "
            "deserialising (`load`, a stricter yardstick for downloads) beside it. Target: >= "
            f"50% of serialisation. Timed in turns, median of {r.get('repeats', 3)} passes, so "
            "a busy spell of the machine slows all of them alike.",
            "",
            "| | MB/s | vs serialise | vs deserialise |",
            "|---|---|---|---|",
            f"| `safetensors` serialise / deserialise | {r['encode_mb_s']:.0f} / "
            f"{r['decode_mb_s']:.0f} | | |",
            f"| upload (push) | {r['upload_mb_s']:.0f} | {r['upload_vs_encode']:.0%} | |",
            f"| download (pull) | {r['download_mb_s']:.0f} | "
            f"{r.get('download_vs_encode', r['download_mb_s'] / r['encode_mb_s']):.0%} | "
            f"{r['download_vs_decode']:.0%} |",
            f"| publish (create model) | {r['create_mb_s']:.0f} | | |",
            "",
        ]
        if "codec_encode_mb_s" in r:
            out += [
                "The hub's own safetensors codec (`fedssl.hub.weights`: one buffer written "
                "directly; decoding a received `bytearray` makes tensors that view it, after "
                f"checking every offset) runs at {r['codec_encode_mb_s']:.0f} MB/s encoding and "
                f"{r['codec_decode_mb_s']:.0f} MB/s decoding in the same run; files it writes "
                "are read by the `safetensors` library and the other way round (tested).",
                "",
            ]
    if "merge" in res:
        r = res["merge"]
        out += [
            "## Merge latency, 10 ResNet-50 contributions",
            "",
            f"Command: `python benchmarks/hub.py merge` ({r['date']}). Hub = the `Merge` call: "
            "read 10 blobs in one transaction, decode, `fedssl.aggregation.merge(avg, weighted)`, "
            "encode, write the version, mark the contributions. Reference: the aggregation "
            "layer alone on the same 10 in-memory state dicts.",
            "",
            "| contributions | merge() alone s | hub Merge call s | ratio |",
            "|---|---|---|---|",
            f"| {r['n']} | {r['merge_s']:.2f} | {r['hub_merge_s']:.2f} | {r['ratio']:.1f}x |",
            "",
        ]
    if "requests" in res:
        r = res["requests"]
        out += [
            "## Request rate: `GetModelInfo` with 20 concurrent clients",
            "",
            f"Command: `python benchmarks/hub.py requests` ({r['date']}). {r['clients']} client "
            f"threads (one channel and key each) calling `info()` for {r['seconds']:.0f} s; every "
            "call authenticates its key against the store and reads the model's metadata.",
            "",
            "| clients | calls | calls/s | errors |",
            "|---|---|---|---|",
            f"| {r['clients']} | {r['calls']} | {r['calls_per_s']:.0f} | {r['errors']} |",
            "",
        ]
    for title, text in res.get("notes", {}).items():
        out += [f"## {title}", "", text.strip(), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("section", choices=["throughput", "merge", "requests", "crowdsource", "all",
                                        "render"])  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--contributions", type=int, default=10)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--page", type=Path, default=PAGE)
    # anything else goes to launch/crowdsource.py (crowdsource section)
    a, extra = ap.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    res = json.loads(a.results.read_text()) if a.results.is_file() else {}
    res["_env"] = {"machine": f"{os.cpu_count()} CPUs, no GPU, Python {sys.version.split()[0]}"}
    stamp = {"date": datetime.date.today().isoformat()}
    sections = (
        ["throughput", "merge", "requests", "crowdsource"] if a.section == "all" else [a.section]
    )
    try:
        for s in sections:
            if s == "throughput":
                res["throughput"] = {**throughput(a.repeats), **stamp}
            elif s == "merge":
                res["merge"] = {**merge_latency(a.contributions), **stamp}
            elif s == "requests":
                res["requests"] = {**requests_rate(a.clients, a.seconds), **stamp}
            elif s == "crowdsource":
                res["crowdsource"] = {**crowdsource(extra), **stamp}
    finally:
        harness.write_results(a.page, res, render, json_path=a.results)
    print(f"[hub] wrote {a.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
