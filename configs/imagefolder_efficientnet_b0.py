"""sepnets train --config configs/imagefolder_efficientnet_b0.py --workdir runs/effnet_b0 --config.data.dir=DATA/imagenet

EfficientNet-B0 at 224 on an ImageFolder (DIR/train/CLASS/*.jpg and DIR/val/CLASS/...):
random-resized-crop and flips for training, resize and centre crop for evaluation, ImageNet
normalization, bf16 compute with fp32 parameters. TF-style RMSProp, warmup and exponential decay
(the EfficientNet recipe, scaled to batch 256), drop path 0.2, dropout 0.2, EMA 0.9999.
"""

import ml_collections


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='efficientnet_b0', dtype='bfloat16', dropout=0.2, drop_path_rate=0.2)
  c.data = dict(name='imagefolder', dir='', image_size=224, random_resized_crop=True, flip=True,
                num_classes=1000,  # for --dry-run only; training counts the class folders
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), workers=8, prefetch=4)
  c.train = dict(batch_size=256, epochs=350.0, log_every=100, eval_every=5000,
                 checkpoint_every=1000, label_smoothing=0.1, ema_decay=0.9999,
                 eval_batch_size=250, keep_checkpoints=3)
  c.optimizer = dict(name='rmsprop', learning_rate=0.016, momentum=0.9, rms_decay=0.9, eps=1e-3,
                     weight_decay=1e-5)
  c.schedule = dict(name='exponential', warmup_steps=25000, decay_rate=0.97, decay_steps=12000)
  if preset is not None:
    raise ValueError(f'unknown preset {preset!r}; this config has none')
  return c
