"""Weighted kNN accuracy (the stage-one monitor)."""

import pytest
import torch
import torch.nn.functional as F

from fedssl.methods.knn import class_accuracy, knn_accuracy, knn_predictions


def _clusters(n_per: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(4, 16) * 5
    x = torch.cat([centers[k] + torch.randn(n_per, 16, generator=g) for k in range(4)])
    y = torch.arange(4).repeat_interleave(n_per)
    return F.normalize(x, dim=1), y


def test_knn_separates_clusters_and_is_chance_on_shuffled_labels():
    bank, by = _clusters(50, 0)
    q, qy = _clusters(25, 1)
    assert knn_accuracy(bank, by, q, qy, 4, k=20) == pytest.approx(1.0)
    shuffled = by[torch.randperm(len(by), generator=torch.Generator().manual_seed(2))]
    assert knn_accuracy(bank, shuffled, q, qy, 4, k=20) < 0.5
    # k larger than the bank is capped, batches give the same answer
    assert knn_accuracy(bank, by, q, qy, 4, k=10_000, batch_size=7) == knn_accuracy(
        bank, by, q, qy, 4, k=len(bank)
    )


def test_class_accuracy_splits_the_queries_by_their_class():
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    acc = class_accuracy(pred, labels, 4)
    assert acc[:3] == pytest.approx([0.5, 0.5, 1.0]) and acc[3] != acc[3]  # no query: nan
    # the monitor's predictions score as knn_accuracy; a cluster relabelled is wrong alone
    bank, by = _clusters(50, 0)
    q, qy = _clusters(25, 1)
    relabelled = torch.where(by == 3, torch.tensor(2), by)
    pred = knn_predictions(bank, relabelled, q, 4, k=20)
    assert class_accuracy(pred, qy, 4) == pytest.approx([1.0, 1.0, 1.0, 0.0])
    assert knn_accuracy(bank, relabelled, q, qy, 4, k=20) == pytest.approx(0.75)


def test_knn_errors():
    bank, by = _clusters(5, 0)
    with pytest.raises(ValueError, match="must not be empty"):
        knn_accuracy(bank[:0], by[:0], bank, by, 4)
    with pytest.raises(ValueError, match="16 wide, queries 8"):
        knn_accuracy(bank, by, bank[:, :8], by, 4)


def _conv_bn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Flatten()
    )
    net[1].running_mean.fill_(50.0)  # statistics of some other data
    net[1].running_var.fill_(1e-3)
    return net.eval()


def test_with_own_statistics_re_estimates_batchnorm_on_the_given_images_only():
    from fedssl.methods.knn import with_own_statistics

    net = _conv_bn()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 6, 6, generator=g) * 3 + 2, torch.zeros(8)) for _ in range(3)]
    own = with_own_statistics(net, batches)
    # by hand: the conv's outputs per batch, averaged over the equal-sized batches
    with torch.no_grad():
        outs = [net[0](x).transpose(0, 1).flatten(1) for x, _ in batches]
    mean = torch.stack([o.mean(1) for o in outs]).mean(0)
    var = torch.stack([o.var(1, unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(own[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(own[1].running_var, var, rtol=1e-5)
    # the weights are the same, the original keeps its statistics and its mode
    assert torch.equal(own[0].weight, net[0].weight) and torch.equal(own[1].weight, net[1].weight)
    assert float(net[1].running_mean[0]) == 50.0 and not net.training
    # the old statistics leave no trace: two backbones that differ only in them agree after
    other = _conv_bn()
    other[1].running_mean.zero_()
    x = batches[0][0]
    assert not torch.allclose(net(x), other(x))
    assert torch.allclose(own.eval()(x), with_own_statistics(other, batches).eval()(x), atol=1e-6)


def test_with_own_statistics_without_batchnorm_or_images():
    from fedssl.methods.knn import with_own_statistics

    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    x = torch.randn(4, 1, 5, 5)
    assert torch.equal(with_own_statistics(plain, [(x, torch.zeros(4))])(x), plain(x))
    with pytest.raises(ValueError, match="no batches"):
        with_own_statistics(_conv_bn(), [])
