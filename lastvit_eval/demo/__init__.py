"""Bundled offline demo: synthetic tiny-ImageNet data and two tiny trained ViT checkpoints."""
