"""fedssl: federated self-supervised, multi-task learning on Flower, Lightning and lightly."""

__version__ = "0.1.0"
