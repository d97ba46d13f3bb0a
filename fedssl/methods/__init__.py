"""Training and evaluation on one machine: LightningModules (SSL methods, supervised
classification, stage two's heads), their procedures and the kNN monitor. Nothing here imports
Flower: :mod:`fedssl.federation` adapts these to rounds."""
