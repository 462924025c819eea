"""sepnets: efficient separable-convolution CNNs in JAX/Flax NNX with compiler-level costs."""

__version__ = '0.1.0'

__all__ = ['__version__']
