"""Networks and LightningModules."""
