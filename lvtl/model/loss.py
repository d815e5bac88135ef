"""The sparse-label loss: multi-class soft Dice over the labelled phases only.

A site with labels at ED and ES alone trains on those two frames of each 4D sequence; the
other phases never enter the computation, so they contribute exactly zero loss and zero
gradient. The Dice itself is MONAI's ``DiceLoss`` (softmax, one-hot target, pooled over the
batch); lvtl only selects the labelled frames, because MONAI's ``MaskedDiceLoss`` applies the
softmax after masking, so masked-out frames would still add to the denominators.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss

#: Soft Dice smoothing, added to numerator and denominator.
SMOOTH = 1e-5


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor,
                     smooth: float = SMOOTH) -> torch.Tensor:
    """``1 - mean over classes of soft Dice``, pooled over the labelled frames of the batch.

    ``logits`` ``(N, K, T, D, H, W)``; ``target`` ``(N, T, D, H, W)`` integer labels in
    ``[0, K)``; ``labelled`` ``(N, T)`` bool. With no labelled frame the loss is 0 (and its
    gradient exactly zero).
    """
    if logits.dim() != 6:
        raise ValueError(f"logits must be (N, K, T, D, H, W), got {tuple(logits.shape)}")
    n, k, t = logits.shape[:3]
    if target.shape != (n, t, *logits.shape[3:]):
        raise ValueError(f"target {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    if labelled.shape != (n, t) or labelled.dtype != torch.bool:
        raise ValueError(f"labelled must be a bool tensor of shape {(n, t)}, got "
                         f"{tuple(labelled.shape)} {labelled.dtype}")
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    # Select the labelled frames: (frames, K, D, H, W) and (frames, D, H, W).
    frames = logits.permute(0, 2, 1, 3, 4, 5)[labelled]
    truth = target[labelled].long()
    if int(truth.min()) < 0 or int(truth.max()) >= k:
        raise ValueError(f"target labels must lie in [0, {k}), got {int(truth.min())} to "
                         f"{int(truth.max())}")
    # MONAI's soft Dice: softmax over the classes, one-hot target, sums pooled over the frames
    # (batch=True), background included, mean over the classes
    dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True,
                    smooth_nr=smooth, smooth_dr=smooth, reduction="mean")
    return dice(frames, truth[:, None])
