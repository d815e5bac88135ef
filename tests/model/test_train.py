"""The training loop, inference and the one-site study on tiny synthetic 4D cases."""


from dataclasses import replace

import numpy as np
import pytest
import torch
from synthetic4d import make_case

from lvtl.errors import ConfigError, TrainError
from lvtl.model.infer import evaluate_dice, predict_labels
from lvtl.model.network import LVNet4d
from lvtl.model.train import TrainConfig, init_weights, train

CROP = (4, 16, 16, 16)


def tiny_model(seed=0):
    model = LVNet4d(init_filters=4, blocks_down=(1, 1), groups=4)
    init_weights(model, "default", seed)
    return model


def cfg(**kw):
    base = dict(epochs=4, samples_per_epoch=4, crop=CROP, lr=1e-2, decay_every=2, seed=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cases():
    return [make_case(f"c{i}", i) for i in range(5)]


def test_training_learns_and_keeps_the_best_model(cases, tmp_path):
    model = tiny_model()
    before = evaluate_dice(model, cases[3:], CROP)
    res = train(model, cases[:3], cases[3:], cfg(epochs=10), tmp_path)
    assert res.best_val_dice > before + 0.15  # a real gain, not noise
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    best = torch.load(res.best_path, weights_only=True)
    assert best["meta"]["metrics"]["val_dice"] == pytest.approx(res.best_val_dice)
    assert best["meta"]["metrics"]["best_epoch"] == res.best_epoch
    assert best["config"]["input"]["spacing_mm"] == [1.0, 1.0, 1.0]
    from lvtl.labels import NAMES
    from lvtl.model.checkpoint import model_checkpoint

    assert best["config"]["labels"] == NAMES
    coarse = model_checkpoint(model, cfg(spacing_mm=2.0), {})  # a 2 mm study says so
    assert coarse["config"]["input"]["spacing_mm"] == [2.0, 2.0, 2.0]
    # the learning rate decays by 0.9 every decay_every epochs, stepped after the epoch
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] == pytest.approx(1e-2) and lrs[1] == pytest.approx(9e-3)
    assert lrs[9] == pytest.approx(1e-2 * 0.9**5)
    assert 0 <= res.loading_share < 0.5


def test_same_seed_same_run(cases, tmp_path):
    a = train(tiny_model(), cases[:3], cases[3:], cfg(), tmp_path / "a")
    b = train(tiny_model(), cases[:3], cases[3:], cfg(), tmp_path / "b")
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = train(tiny_model(), cases[:3], cases[3:], cfg(seed=2), tmp_path / "c")
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_interrupted_training_resumes_to_the_same_weights(cases, tmp_path):
    whole = tiny_model()
    train(whole, cases[:3], cases[3:], cfg(epochs=4), tmp_path / "whole")

    part = tiny_model()
    undo = _interrupt_after(10)  # a crash in the third epoch's second step
    try:
        with pytest.raises(KeyboardInterrupt):
            train(part, cases[:3], cases[3:], cfg(epochs=4), tmp_path / "part")
    finally:
        undo()
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    assert state["epoch"] == 1  # two epochs (0 and 1) were complete
    with pytest.raises(ConfigError, match="epochs=4 \\(now 6\\)"):
        train(tiny_model(), cases[:3], cases[3:], cfg(epochs=6), tmp_path / "part")
    resumed = tiny_model(seed=5)  # different start weights: all must come from the checkpoint
    res = train(resumed, cases[:3], cases[3:], cfg(epochs=4), tmp_path / "part")
    assert res.epochs_run == 2
    for (k, v), w in zip(whole.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.equal(v, w), k


def _interrupt_after(steps):
    """Patch Adam.step to raise on call ``steps`` (a crash mid-training); returns undo."""
    real = torch.optim.Adam.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == steps:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    torch.optim.Adam.step = step
    return lambda: setattr(torch.optim.Adam, "step", real)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cases, tmp_path):
    model = tiny_model()
    with torch.no_grad():  # a model whose output is NaN
        model.head[-1].bias.fill_(float("nan"))
    with pytest.raises(TrainError, match="epoch 1: the loss is nan"):
        train(model, cases[:3], cases[3:], cfg(epochs=3), tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "last.pt").exists()  # nothing written after the NaN
    # two good epochs, then a crash; resuming into NaN data stops at epoch 3 and leaves the
    # last good checkpoint as it was
    undo = _interrupt_after(9)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny_model(), cases[:3], cases[3:], cfg(epochs=3), tmp_path)
    finally:
        undo()
    good = torch.load(tmp_path / "last.pt", weights_only=False)
    assert good["epoch"] == 1
    # the same cases (a resume needs the same data), their images now NaN
    bad = [replace(c, image=np.full(c.image.shape, np.nan, np.float32)) for c in cases[:3]]
    with pytest.raises(TrainError, match="epoch 3: the loss is nan"):
        train(tiny_model(), bad, cases[3:], cfg(epochs=3), tmp_path)
    after = torch.load(tmp_path / "last.pt", weights_only=False)
    assert after["epoch"] == 1
    for k, v in good["model"].items():
        assert torch.equal(v, after["model"][k])


def test_cases_without_labels_are_excluded(cases, tmp_path):
    empty = make_case("empty", 9)
    empty.labelled[:] = False
    said = []
    train(tiny_model(), [empty, *cases[:2]], cases[3:], cfg(epochs=1), tmp_path / "a",
          say=said.append)
    assert any("empty: no labelled phase" in s for s in said)
    with pytest.raises(TrainError, match="no training case has a labelled phase"):
        train(tiny_model(), [empty], cases[3:], cfg(epochs=1), tmp_path / "b")
    with pytest.raises(ConfigError):
        train(tiny_model(), cases[:2], [], cfg(crop=(4, 16, 16)), tmp_path / "c")


def test_paper_normal_init_draws_unit_variance_weights():
    model = LVNet4d(init_filters=4, blocks_down=(1, 1), groups=4)
    init_weights(model, "normal", 0)
    w = model.stem.weight.detach()
    assert abs(float(w.std()) - 1.0) < 0.15 and abs(float(w.mean())) < 0.2
    with pytest.raises(ConfigError):
        init_weights(model, "xavier")


def test_sliding_window_inference_covers_every_phase_and_voxel(cases):
    model = tiny_model()
    c = make_case("odd", 3, t=5, n=21)
    labels, phases = predict_labels(model, c.image, CROP)
    assert phases == list(range(5)) and labels.shape == (5, 21, 21, 21)
    assert set(np.unique(labels)) <= {0, 1, 2}
    some, chosen = predict_labels(model, c.image, CROP, phases=[4, 1])
    assert chosen == [4, 1] and some.shape == (2, 21, 21, 21)
    # a volume smaller than the crop is padded with air and cropped back
    small, _ = predict_labels(model, c.image[:, :10, :12, :9], CROP, phases=[0])
    assert small.shape == (1, 10, 12, 9)


def test_a_run_split_into_rounds_trains_the_same_weights(cases, tmp_path):
    """The fed-transfer arm's site step: epochs 0-1, then 2-3 from the weights the first
    round left (as the server sends them back with one site), equal one 4-epoch run."""
    from lvtl.model.train import train_round

    whole = tiny_model()
    train(whole, cases[:3], [], cfg(epochs=4), tmp_path / "whole")
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    split = tiny_model()
    state = tmp_path / "site" / "round.pt"
    first = train_round(split, cases[:3], cfg(epochs=4), state, 0, 2)
    assert first.steps == 8 and not first.resumed
    global_ = {k: v.clone() for k, v in split.state_dict().items()}
    second = train_round(split, cases[:3], cfg(epochs=4), state, 2, 4)
    assert second.steps == 8
    for k, v in whole.items():
        assert torch.equal(v, split.state_dict()[k]), k
    # the same round asked for again (a resumed job) gives the same weights, untrained
    again = tiny_model(seed=3)
    again.load_state_dict(global_)
    res = train_round(again, cases[:3], cfg(epochs=4), state, 2, 4)
    assert res.resumed and res.steps == 0
    for k, v in whole.items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_fedprox_pulls_a_round_toward_its_start(cases, tmp_path):
    from lvtl.model.train import train_round

    start = tiny_model()
    init = {k: v.clone() for k, v in start.state_dict().items()}

    def moved(mu):
        model = tiny_model()
        train_round(model, cases[:3], cfg(epochs=2), tmp_path / f"mu{mu}.pt", 0, 2, mu=mu)
        return sum(float(((model.state_dict()[k] - v) ** 2).sum()) for k, v in init.items())

    plain, prox = moved(0.0), moved(10.0)
    assert prox < 0.9 * plain  # the proximal term keeps the weights nearer the global model
    with pytest.raises(ConfigError, match="within 0..2"):
        train_round(tiny_model(), cases[:3], cfg(epochs=2), tmp_path / "x.pt", 1, 3)
