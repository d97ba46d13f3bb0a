"""DP-SGD on a client (fedssl.methods.dp_sgd): per-sample clipping bounds every step, the
noise is sized for the whole run's budget, models that mix a batch's examples are refused, and
a supervised client reports the privacy it spent (a stage-two head: tests/federation/
test_finetune.py)."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedssl.config import load_config
from fedssl.methods.dp_sgd import DPSGD, PrivateFit, batches_per_epoch, plan
from fedssl.privacy import PrivacyError, epsilon


class _Linear(pl.LightningModule):
    def __init__(self, private=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
        self.private = private

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return self.private.optimizer(opt) if self.private else opt


def _step_size(private: bool, clip: float, sigma: float = 0.0) -> float:
    """The parameters' change after one full-batch step of lr 1 on large inputs."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8) * 50, torch.randint(0, 2, (64,))
    module = _Linear()
    before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    pf = None
    if private:
        pf = PrivateFit(DPSGD(sigma, clip, 1.0, 1e-5), module.net)
        module.private = pf
        loader = pf.loader(loader)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, loader)
    if pf:
        pf.close()
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    return float((after - before).norm())


def test_every_step_moves_at_most_the_clipping_norm_without_noise():
    # the mean of per-sample gradients clipped to C has norm <= C (the batch is Poisson, so
    # its size varies around 64; the mean divides by the expected 64)
    clip = 0.01
    plain = _step_size(False, clip)
    private = _step_size(True, clip)
    assert plain > 10 * clip  # the bound is not trivially met
    assert private <= clip * 1.5  # a Poisson batch can hold a few more than 64 examples
    assert _step_size(True, clip, sigma=10.0) > 2 * private  # noise moves it further


def test_the_plan_spends_the_budget_of_the_whole_run():
    settings = load_config(None, ["privacy.dp_sgd.epsilon=4"]).privacy.dp_sgd
    examples, batch, rounds = 600, 32, 5
    steps = rounds * batches_per_epoch(examples, batch)
    dp = plan(settings, examples, batch, steps)
    assert dp.sample_rate == pytest.approx(1 / 19)
    # never over the target, and no more noise than needed (0.5 % less noise overshoots)
    assert 3.9 <= dp.epsilon(steps) <= 4.0
    assert epsilon([(dp.noise_multiplier * 0.995, 1 / 19, steps)], 1e-5) > 4.0
    given = load_config(None, ["privacy.dp_sgd.noise_multiplier=1.3"]).privacy.dp_sgd
    assert plan(given, examples, batch, steps).noise_multiplier == 1.3


def test_a_model_that_mixes_a_batch_is_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(PrivacyError, match="BatchNorm"):
        PrivateFit(DPSGD(1.0, 1.0, 0.1, 1e-5), net)
    # a BatchNorm without parameters, kept in eval mode, mixes nothing: allowed
    frozen = nn.Sequential(nn.BatchNorm1d(4, affine=False).eval(), nn.Linear(4, 2))
    PrivateFit(DPSGD(1.0, 1.0, 0.1, 1e-5), frozen).close()


def test_a_supervised_client_reports_its_dp_sgd(tiny_fashion):
    from fedssl.federation.supervised import initial_state, local_train

    cfg = load_config(
        None,
        [f"data.root={tiny_fashion}", "data.train_per_client=200", "data.test_per_client=40",
         "model.width=4", "model.hidden=16", "train.batch_size=25", "federation.rounds=3",
         "privacy.dp_sgd.epsilon=2"],
    )  # fmt: skip
    state, m = local_train(cfg, 0, initial_state(cfg), 1)
    assert m["dp_rate"] == pytest.approx(1 / batches_per_epoch(m["num-examples"], 25))
    assert m["dp_steps"] == m["steps"] > 0
    # three rounds of this client's steps stay within its budget
    assert epsilon([(m["dp_noise"], m["dp_rate"], 3 * m["dp_steps"])], 1e-5) <= 2.0
    assert all(torch.isfinite(v).all() for v in state.values())


def _client_round(cfg, monkeypatch=None, dummy=False):
    """One supervised client's round 1 (the weights it sends), on its own data or, as the
    server could replay it, on dummy data of the same size."""
    from fedssl.federation import supervised as S

    if dummy:
        real = S.client_tensors

        def fake(data_cfg, pid):
            parts = real(data_cfg, pid)
            g = torch.Generator().manual_seed(123)
            return {k: (torch.rand(x.shape, generator=g), y) for k, (x, y) in parts.items()}

        monkeypatch.setattr(S, "client_tensors", fake)
    try:
        state, _ = S.local_train(cfg, 0, S.initial_state(cfg), 1)
    finally:
        if dummy:
            monkeypatch.undo()
    return torch.cat([v.flatten().double() for k, v in sorted(state.items())])


def _replay(tiny_fashion, monkeypatch, extra=()):
    """The regeneration attack: the server knows the run's seed (it sends it), so it replays
    the client's step on dummy data with and without noise; their difference is its estimate
    of the client's noise. Returns (|estimate - true noise|, |true noise|)."""
    base = [f"data.root={tiny_fashion}", "data.train_per_client=200", "data.test_per_client=40",
            "model.width=4", "model.hidden=16", "train.batch_size=50", "train.local_steps=1",
            "train.momentum=0", "privacy.dp_sgd.max_grad_norm=1", *extra]  # fmt: skip
    noisy = load_config(None, [*base, "privacy.dp_sgd.noise_multiplier=1.0"])
    clean = load_config(None, [*base, "privacy.dp_sgd.noise_multiplier=0"])
    true_noise = _client_round(noisy) - _client_round(clean)  # the client's own, unknowable
    guess = _client_round(noisy, monkeypatch, True) - _client_round(clean, monkeypatch, True)
    return float((guess - true_noise).norm()), float(true_noise.norm())


def test_the_server_cannot_regenerate_a_clients_noise_from_the_run_seed(tiny_fashion, monkeypatch):
    residual, noise = _replay(tiny_fashion, monkeypatch)
    assert noise > 0.01
    # independent draws: the estimate misses by about sqrt(2) times the noise, nothing recovered
    assert residual > 0.9 * noise
    # the attack itself works: with a reproducible noise_seed it recovers the noise exactly
    residual, noise = _replay(tiny_fashion, monkeypatch, ["privacy.dp_sgd.noise_seed=5"])
    assert residual < 1e-4 * noise


def test_two_runs_of_one_private_config_differ_and_plain_runs_do_not(tiny_fashion):
    base = [
        f"data.root={tiny_fashion}",
        "data.train_per_client=200",
        "data.test_per_client=40",
        "model.width=4",
        "model.hidden=16",
        "train.batch_size=50",
        "train.local_steps=2",
    ]
    private = load_config(None, [*base, "privacy.dp_sgd.epsilon=4"])
    assert not torch.equal(_client_round(private), _client_round(private))
    plain = load_config(None, base)
    assert torch.equal(_client_round(plain), _client_round(plain))
