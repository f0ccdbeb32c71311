"""Latent editing: linear directions, the latent editor, the HFLD loss, training and refinement."""
