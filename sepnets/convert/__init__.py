"""Weight conversion between sepnets and PyTorch (torchvision, timm)."""

from sepnets.convert.from_torch import load_state_dict, load_torch_weights

__all__ = ['load_state_dict', 'load_torch_weights']
