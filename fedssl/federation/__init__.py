"""Flower glue: ClientApp, ServerApp, the merge strategy and state-dict <-> record conversion."""
