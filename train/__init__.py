"""nanoloom training: `python -m train` (Hydra entry point) and the loop it runs (train.loop.run)."""
