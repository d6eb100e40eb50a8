"""Training and distillation of the MobileGen UNets, with fp16 quantization-aware training."""

from mobilegen.train.data import DataError, ImageFolder, write_demo_data, write_demo_folder
from mobilegen.train.loop import EMA, LAST, TrainConfig, Trainer, TrainResult, train

__all__ = [
    "EMA",
    "LAST",
    "DataError",
    "ImageFolder",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "train",
    "write_demo_data",
    "write_demo_folder",
]
