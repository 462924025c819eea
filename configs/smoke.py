"""sepnets train --config configs/smoke.py --workdir /tmp/smoke

A smoke run: a narrow MobileNetV1 on learnable synthetic 32x32 images, well under a minute on a
2-core CPU; accuracy climbs far above chance (10 classes). Presets: `:tiny` (a handful of steps,
for tests).
"""

import ml_collections


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='mobilenet_v1', width=0.25, stem_stride=1)
  c.data = dict(name='synthetic', image_size=32, num_classes=10, train_size=1024, eval_size=256,
                flip=False)
  c.train = dict(batch_size=32, epochs=3.0, log_every=8, checkpoint_every=32, eval_batch_size=128,
                 label_smoothing=0.1, ema_decay=0.99)
  c.optimizer = dict(name='sgd', learning_rate=0.05, momentum=0.9, nesterov=True,
                     weight_decay=5e-5)
  c.schedule = dict(name='cosine', warmup_steps=8)
  if preset == 'tiny':
    c.data.train_size = 256
    c.data.eval_size = 64
    c.train.epochs = 0.0
    c.train.steps = 12
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.train.batch_size = 16
    c.train.eval_batch_size = 64
  elif preset is not None:
    raise ValueError(f'unknown preset {preset!r}; expected tiny')
  return c
