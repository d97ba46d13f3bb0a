"""Models: shapes, the restricted softmax, augmentation keeps labels' geometry sane."""

import pytest
import torch

from fedssl.methods.supervised import Classifier, accuracy
from fedssl.models.small import MLP, PaperCNN, build_small_model


@pytest.mark.parametrize("padding", [False, True])
def test_paper_cnn_shapes(padding):
    net = PaperCNN(num_classes=10, width=4, hidden=8, batchnorm=True, padding=padding, dropout=0.1)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert MLP(10, hidden=8)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model"):
        build_small_model("resnet", 10)


@pytest.mark.parametrize("padding", [False, True])
def test_paper_cnn_depth_two_stacks_convolutions(padding):
    net = PaperCNN(num_classes=10, width=4, hidden=8, batchnorm=True, padding=padding, depth=2)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 4), (4, 8), (8, 8)]
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="depth"):
        PaperCNN(depth=0)
    with pytest.raises(ValueError, match="padding=True"):
        PaperCNN(depth=5, padding=False)


def test_restricted_softmax_ignores_other_labels():
    net = torch.nn.Linear(2, 4, bias=False)
    m = Classifier(net, allowed_labels=[0, 1])
    logits = torch.tensor([[1.0, 2.0, 50.0, 50.0]])
    masked = m._masked(logits)
    assert torch.isinf(masked[0, 2:]).all() and torch.equal(masked[0, :2], logits[0, :2])
    # the loss over allowed labels does not depend on the other logits
    y = torch.tensor([1])
    l1 = torch.nn.functional.cross_entropy(m._masked(logits), y)
    l2 = torch.nn.functional.cross_entropy(m._masked(torch.tensor([[1.0, 2.0, -9.0, 0.0]])), y)
    assert torch.allclose(l1, l2)


def test_augmentation_flip_and_shift_preserve_content():
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10:14, 3:7] = 1.0
    torch.manual_seed(0)
    flipped = Classifier(torch.nn.Identity(), augment="flip")._augmented(x)
    n_flipped = int((flipped[:, 0, 10:14, 21:25].sum((1, 2)) == 16).sum())
    assert 10 < n_flipped < 54  # about half
    shifted = Classifier(torch.nn.Identity(), augment="flip_shift", shift=2)._augmented(x)
    assert torch.allclose(shifted.sum((1, 2, 3)), x.sum((1, 2, 3)))  # block moved, not cut
    with pytest.raises(ValueError, match="unknown augment"):
        Classifier(torch.nn.Identity(), augment="mixup")


def test_accuracy_helper():
    net = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert accuracy(net, x, torch.tensor([0, 1, 1]), batch_size=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy(net, x[:0], torch.tensor([], dtype=torch.long))


def _drift(prox_mu: float) -> float:
    """How far 20 SGD steps move an MLP from its start, with the given FedProx weight."""
    from torch.utils.data import DataLoader, TensorDataset

    from fedssl import runtime
    from fedssl.config import RuntimeConfig

    torch.manual_seed(0)
    net = MLP(4, hidden=16, in_features=8)
    start = [p.detach().clone() for p in net.parameters()]
    module = Classifier(net, lr=0.1, momentum=0.0, prox_mu=prox_mu)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    trainer = runtime.trainer(runtime.resolve(RuntimeConfig()), max_steps=20)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    if prox_mu:
        assert module.proximal_term() > 0  # the term is live at the end of the fit
    with torch.no_grad():
        return float(
            sum(((p - s) ** 2).sum() for p, s in zip(net.parameters(), start, strict=True))
        )


def test_fedprox_term_keeps_weights_near_the_start():
    free, prox = _drift(0.0), _drift(5.0)
    assert prox < 0.5 * free
    with pytest.raises(ValueError, match="prox_mu must be >= 0"):
        Classifier(torch.nn.Identity(), prox_mu=-1.0)
