"""Self-supervised methods, one module per method, each from lightly's building blocks."""
