"""sepnets train --config configs/cifar10_mobilenet_v2.py --workdir runs/cifar10_mnv2 --config.data.dir=DATA/cifar-10-batches-bin

MobileNetV2 on CIFAR-10 from the official binary files, the usual 32x32 variant: stem stride 1
(16x downsampling instead of 32x). SGD with Nesterov momentum, warmup then cosine, pad-and-crop
and flips, label smoothing and an EMA of the weights. Presets: `:short` (2 epochs).
"""

import ml_collections


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='mobilenet_v2', stem_stride=1, dropout=0.2)
  c.data = dict(name='cifar10', dir='', image_size=32, crop_padding=4, flip=True,
                mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
  c.train = dict(batch_size=128, epochs=200.0, log_every=50, eval_every=1950,
                 checkpoint_every=390, label_smoothing=0.1, ema_decay=0.9998,
                 eval_batch_size=500)
  c.optimizer = dict(name='sgd', learning_rate=0.1, momentum=0.9, nesterov=True,
                     weight_decay=4e-5)
  c.schedule = dict(name='cosine', warmup_steps=1950)
  if preset == 'short':
    c.train.epochs = 2.0
    c.train.eval_every = 390
    c.schedule.warmup_steps = 100
  elif preset is not None:
    raise ValueError(f'unknown preset {preset!r}; expected short')
  return c
