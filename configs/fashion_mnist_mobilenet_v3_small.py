"""sepnets train --config configs/fashion_mnist_mobilenet_v3_small.py --workdir runs/fmnist_mnv3s --config.data.dir=/usr/share/datasets/fashion-mnist

MobileNetV3-Small on Fashion-MNIST from the standard IDX files (the Debian package
`dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist). The 28x28 images
are zero-padded to 32x32, one input channel, stem stride 1. TF-style RMSProp as in the MobileNet
papers, with exponential decay. Presets: `:short` (one epoch).
"""

import ml_collections


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='mobilenet_v3_small', stem_stride=1)
  c.data = dict(name='fashion_mnist', dir='/usr/share/datasets/fashion-mnist', image_size=32,
                channels=1, crop_padding=2, flip=True, mean=(0.2860,), std=(0.3530,))
  c.train = dict(batch_size=128, epochs=30.0, log_every=50, eval_every=2340,
                 checkpoint_every=468, label_smoothing=0.1, ema_decay=0.999,
                 eval_batch_size=500)
  c.optimizer = dict(name='rmsprop', learning_rate=0.016, momentum=0.9, rms_decay=0.9,
                     eps=1e-3, weight_decay=1e-5)
  c.schedule = dict(name='exponential', warmup_steps=468, decay_rate=0.97, decay_steps=468)
  if preset == 'short':
    c.train.epochs = 1.0
    c.train.eval_every = 0
  elif preset is not None:
    raise ValueError(f'unknown preset {preset!r}; expected short')
  return c
