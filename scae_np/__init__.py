"""scae-np: stacked convolutional auto-encoders (Masci et al., ICANN 2011) and the CNN they
initialise, trained with the hand-written kernels of :mod:`kernels`."""
__version__ = "0.1.0"
