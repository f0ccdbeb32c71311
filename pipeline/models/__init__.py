"""Pretrained models behind small interfaces, and the registry of their weight files."""
