"""Face generators: the demo DCGAN, StyleGAN2 and the files they load from."""
