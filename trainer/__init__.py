"""Data plane: runs inside Ray workers. ``load_model`` rebuilds a trained model from a checkpoint."""


def load_model(checkpoint_dir, map_location="cpu"):
    from trainer.checkpoint import load_model as _load

    return _load(checkpoint_dir, map_location)
