"""BackboneClassifier: which backbone parts train in each mode, frozen BatchNorm, the head."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedssl import runtime
from fedssl.config import RuntimeConfig
from fedssl.methods.heads import BackboneClassifier, trainable_prefixes
from fedssl.models.backbones import build_backbone


def test_trainable_prefixes_per_mode_and_architecture():
    r18 = build_backbone("resnet18")
    assert trainable_prefixes(r18, "full") == ("",)
    assert trainable_prefixes(r18, "linear") == ()
    # global_pool and fc come after layer4 but hold no weights
    assert trainable_prefixes(r18, "partial") == ("layer4",)
    # ConvNeXt: its last stage, then the final norm inside "head"
    assert trainable_prefixes(build_backbone("convnext_atto"), "partial") == ("stages.3", "head")
    with pytest.raises(ValueError, match="unknown mode 'last'"):
        trainable_prefixes(r18, "last")


def _fit(module, x, y, epochs=3):
    trainer = runtime.trainer(runtime.resolve(RuntimeConfig()), max_epochs=epochs)
    module.train()
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))


@pytest.mark.parametrize(
    ("mode", "stem_changes", "last_stage_changes"),
    [("linear", False, False), ("partial", False, True), ("full", True, True)],
)
def test_modes_train_exactly_their_part(mode, stem_changes, last_stage_changes):
    torch.manual_seed(0)
    module = BackboneClassifier(build_backbone("test_resnet"), 3, mode=mode, lr=0.05)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 3
    _fit(module, x, y)
    after = module.state_dict()

    def changed(prefix):
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    assert changed("head.1.weight")
    assert changed("backbone.conv1.") is stem_changes
    # BatchNorm running statistics of frozen parts stay the pretrained ones
    assert changed("backbone.bn1.") is stem_changes
    assert changed("backbone.layer4.") is last_stage_changes
    assert module.backbone.bn1.training is stem_changes
    expected = {
        "linear": [],
        "partial": [k for k in after if k.startswith("backbone.layer4.")],
        "full": [k for k in after if k.startswith("backbone.")],
    }[mode]
    assert module.trainable_state_keys() == expected


def test_features_input_gives_the_same_logits_as_images():
    torch.manual_seed(0)
    module = BackboneClassifier(build_backbone("test_resnet"), 4).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        from_images = module(x)
        module.features_input = True
        from_features = module(module.backbone(x))
    assert torch.allclose(from_images, from_features)
    assert module.num_classes == 4


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_features"):
        BackboneClassifier(torch.nn.Linear(3, 3), 2)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        BackboneClassifier(build_backbone("test_resnet"), 1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        BackboneClassifier(build_backbone("test_resnet"), 2, optimizer="lbfgs")
