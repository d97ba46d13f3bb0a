"""Fixtures of the federation tests."""

import pytest


@pytest.fixture
def three_clients(tiny_fashion, tmp_path, monkeypatch) -> list[str]:
    """Config overrides of a supervised federation of three equal-weight clients on the tiny
    Fashion-MNIST files (the smallest that secure aggregation serves), one round of five
    local steps each; W&B off."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return [
        f"out_dir={tmp_path}",
        f"data.root={tiny_fashion}",
        "data.train_per_client=300",
        "data.test_per_client=50",
        "data.num_clients=3",
        "federation.min_clients=3",
        "model.width=4",
        "model.hidden=16",
        "train.local_steps=5",
        "train.batch_size=32",
        "federation.rounds=1",
        "federation.weighted=false",
        "tracking.wandb=disabled",
    ]
