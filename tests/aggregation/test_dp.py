"""Client-level DP's merge (fedssl.aggregation.dp): clipping bounds every update, no noise
leaves the unweighted mean unchanged, and the noise has the std sigma * C / n."""

import pytest
import torch

from fedssl.aggregation import merge
from fedssl.aggregation.dp import clip_update, noised_mean, update_norm


def _state(w, b=0.0, counter=3, var=1.0):
    return {
        "w": torch.tensor(w, dtype=torch.float32),
        "b": torch.tensor([b], dtype=torch.float32),
        "bn.running_var": torch.tensor([var]),
        "bn.num_batches_tracked": torch.tensor(counter),
    }


def test_a_clipped_update_has_the_clipping_norm_and_its_direction():
    g = _state([0.0, 0.0])
    s = _state([3.0, 4.0])  # update norm 5
    clipped, norm = clip_update(s, g, 1.0)
    assert norm == pytest.approx(5.0)
    assert update_norm(clipped, g) == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(clipped["w"], torch.tensor([0.6, 0.8]))
    assert clipped["bn.num_batches_tracked"] == s["bn.num_batches_tracked"]
    small, norm = clip_update(_state([0.3, 0.4]), g, 1.0)  # under the norm: unchanged
    assert norm == pytest.approx(0.5) and torch.equal(small["w"], torch.tensor([0.3, 0.4]))
    with pytest.raises(ValueError, match="shape"):
        clip_update({"w": torch.zeros(3)}, g, 1.0)


def test_without_noise_and_under_the_norm_it_is_the_unweighted_mean():
    g = _state([1.0, 1.0], counter=10)
    states = [_state([1.1, 0.9], 0.2, counter=20), _state([1.3, 1.0], -0.1, counter=30)]
    out, norms = noised_mean(g, states, clip=100.0, noise_multiplier=0.0, clients=2)
    plain = merge(states, "avg")
    for k in ("w", "b", "bn.running_var"):
        assert torch.allclose(out[k], plain[k], atol=1e-6), k
    assert out["bn.num_batches_tracked"] == 10  # integers keep the global value
    assert len(norms) == 2 and norms[0] == pytest.approx(update_norm(states[0], g))


def test_a_missing_client_counts_as_a_zero_update():
    g = _state([0.0, 0.0])
    out, _ = noised_mean(g, [_state([0.4, 0.0])], clip=1.0, noise_multiplier=0.0, clients=4)
    assert torch.allclose(out["w"], torch.tensor([0.1, 0.0]))


def test_each_client_moves_the_mean_by_at_most_clip_over_n():
    g = _state([0.0, 0.0])
    out, _ = noised_mean(g, [_state([300.0, 400.0]), _state([0.0, 0.0])], 1.0, 0.0, clients=2)
    assert update_norm(out, g) == pytest.approx(0.5, rel=1e-6)


def test_the_noise_std_is_sigma_clip_over_n():
    n, sigma, clip = 4, 1.5, 2.0
    g = {"w": torch.zeros(200_000), "bn.running_var": torch.full((1000,), 0.01)}
    states = [dict(g) for _ in range(n)]
    gen = torch.Generator().manual_seed(0)
    out, _ = noised_mean(g, states, clip, sigma, n, generator=gen)
    assert out["w"].std().item() == pytest.approx(sigma * clip / n, rel=0.01)
    assert abs(out["w"].mean().item()) < 0.01
    assert (out["bn.running_var"] >= 0).all()  # a variance stays a variance after noise
    again, _ = noised_mean(g, states, clip, sigma, n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["w"], out["w"])  # seeded noise is reproducible


def test_states_that_do_not_match_are_refused():
    g = _state([0.0, 0.0])
    with pytest.raises(ValueError, match="differs from state 0"):
        noised_mean(g, [_state([1.0, 0.0]), {"w": torch.zeros(2)}], 1.0, 0.0, 2)
    with pytest.raises(ValueError, match="not in the global state"):
        noised_mean(g, [{"x": torch.zeros(1)}], 1.0, 0.0, 1)
    with pytest.raises(ValueError, match="from 1 clients"):
        noised_mean(g, [g, g], 1.0, 0.0, 1)
