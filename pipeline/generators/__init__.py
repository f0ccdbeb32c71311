"""Face generators: the demo DCGAN, StyleGAN2, StyleGAN3 and the files they load from."""
