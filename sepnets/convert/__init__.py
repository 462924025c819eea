"""Weight conversion between sepnets and PyTorch (torchvision, timm)."""

from sepnets.convert.from_torch import export_torch_state_dict, load_state_dict, load_torch_weights

__all__ = ['export_torch_state_dict', 'load_state_dict', 'load_torch_weights']
