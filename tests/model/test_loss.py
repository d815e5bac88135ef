"""The sparse-label loss: labelled phases only, exactly zero gradient elsewhere."""

import pytest
import torch
from monai.losses import DiceLoss

from lvtl.model.loss import masked_dice_loss


def _batch(seed=0, n=2, t=5, size=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, t, size, size, size, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (n, t, size, size, size), generator=g)
    labelled = torch.zeros(n, t, dtype=torch.bool)
    labelled[0, [0, 3]] = True
    labelled[1, [1]] = True
    return logits, target, labelled


def test_unlabelled_phases_contribute_exactly_zero_gradient():
    logits, target, labelled = _batch()
    masked_dice_loss(logits, target, labelled).backward()
    grad = logits.grad.permute(0, 2, 1, 3, 4, 5)  # (N, T, K, ...)
    assert torch.count_nonzero(grad[~labelled]) == 0
    assert torch.count_nonzero(grad[labelled]) > 0


def test_unlabelled_phases_do_not_change_the_loss():
    logits, target, labelled = _batch()
    base = masked_dice_loss(logits, target, labelled)
    other_logits = logits.detach().clone()
    other_target = target.clone()
    other_logits[:, :, 4] = 100.0  # phase 4 is unlabelled in both samples
    other_target[:, 4] = 2
    assert masked_dice_loss(other_logits, other_target, labelled) == base


def test_matches_monai_dice_loss_on_the_labelled_frames():
    logits, target, labelled = _batch(seed=3)
    ours = masked_dice_loss(logits, target, labelled, smooth=1e-5)
    frames = logits.permute(0, 2, 1, 3, 4, 5)[labelled]
    truth = target[labelled].unsqueeze(1)
    ref = DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5,
                   smooth_dr=1e-5)(frames, truth)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)


def test_perfect_prediction_gives_zero_loss_and_no_labels_gives_zero():
    _, target, labelled = _batch(seed=4)
    logits = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 50.0
    assert masked_dice_loss(logits, target, labelled).item() == pytest.approx(0.0, abs=1e-5)
    none = torch.zeros_like(labelled)
    x = logits.clone().requires_grad_(True)
    loss = masked_dice_loss(x, target, none)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0


def test_bad_shapes_are_named():
    logits, target, labelled = _batch()
    with pytest.raises(ValueError, match="labelled must be a bool"):
        masked_dice_loss(logits, target, labelled.int())
    with pytest.raises(ValueError, match="does not match"):
        masked_dice_loss(logits, target[:, :3], labelled)
