"""sepnets: efficient separable-convolution CNNs in JAX/Flax NNX with compiler-level costs."""

from sepnets.registry import create_model, get_model_def, list_models

__version__ = '0.1.0'

__all__ = ['__version__', 'create_model', 'get_model_def', 'list_models']
