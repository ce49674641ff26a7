"""Encoder/decoder backbones: the paper's CNNs and any timm model."""
