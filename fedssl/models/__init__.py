"""Networks as plain ``nn.Module``s: timm backbones (and their file format) and the small
networks of the supervised experiments. No Lightning, no Flower."""
