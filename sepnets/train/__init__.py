"""Training: pure, jittable steps (the loop, data and checkpoints come with the training issue)."""
