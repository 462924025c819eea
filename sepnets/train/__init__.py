"""Training: configs, data, optimizers, the jitted steps, checkpoints and the loop.

`sepnets.train.loop.train_and_evaluate(config, workdir)` is the entry point; the `sepnets train`
command is a thin wrapper over it.
"""
