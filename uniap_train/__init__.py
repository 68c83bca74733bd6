"""uniap_train: student / momentum-teacher self-distillation on UniAP queries.

>>> from uniap_train import load_config
>>> cfg = load_config(None, ["data.root=images", "optim.epochs=2"])
>>> cfg.optim.epochs, cfg.data.batch_size
(2.0, 8)

Run ``uniap-train CONFIG.yaml [--set key=value ...]`` (or ``python -m uniap_train``); use a
``recipe: paper`` model with ``uniap_train.Predictor.from_checkpoint(path)`` or ``uniap-predict``;
see ``docs/training.md``.  ``uniap_train`` imports ``uniap``; ``uniap`` never imports it.
"""

from __future__ import annotations

from .config import ConfigError, TrainConfig, load_config, save_config

__all__ = ["ConfigError", "TrainConfig", "load_config", "save_config", "train", "NonFiniteLossError",
           "Predictor", "Prediction"]


def __getattr__(name: str):
    # torch is imported only when training (or predicting) is asked for, so `load_config` stays light.
    if name in ("train", "NonFiniteLossError"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("Predictor", "Prediction"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'uniap_train' has no attribute {name!r}")
