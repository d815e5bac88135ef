"""Training pieces. So far: the sparse-label loss.

``masked_dice_loss`` is a multi-class soft Dice over the labelled phases only: a site with
labels at ED and ES alone trains on those two frames of each 4D sequence, and the other phases
contribute exactly zero loss and zero gradient (they never enter the computation).
"""

from __future__ import annotations

import torch


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor,
                     smooth: float = 1e-5) -> torch.Tensor:
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
    probs = torch.softmax(frames, dim=1)
    onehot = torch.nn.functional.one_hot(truth, k).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()
