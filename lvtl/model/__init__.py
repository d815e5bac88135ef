"""The 4D network, its loss, training, inference and checkpoints."""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "network": "Conv4d LVNet4d",
    "loss": "masked_dice_loss",
    "train": "TrainConfig train train_site init_weights",
    "infer": "predict_labels predict_proba segment_case",
    "checkpoint": "model_checkpoint read_checkpoint build_model",
    "options": "Init",
})
