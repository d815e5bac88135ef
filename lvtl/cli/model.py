"""``lvtl train``, ``lvtl infer``: the 4D model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app, err
from lvtl.model.options import Init


@app.command()
def train(
    cache: Annotated[Path, typer.Argument(help="Cache folder of preprocessed cases "
                                               "(lvtl preprocess).")],
    out: Annotated[Path, typer.Option(help="Run folder: best.pt, last.pt, history.json.")],
    epochs: Annotated[int, typer.Option(help="Epochs (the paper: 500).")] = 500,
    samples_per_epoch: Annotated[int, typer.Option(help="Crops per epoch (0: one per "
                                                        "training case).")] = 0,
    crop: Annotated[str, typer.Option(help="Crop t,z,y,x (the paper: 16,64,96,96).")]
    = "16,64,96,96",
    filters: Annotated[int, typer.Option(help="Filters at the first level (the paper: 8).")] = 8,
    blocks: Annotated[str, typer.Option(help="Residual blocks per level (the paper: 1,2,4).")]
    = "1,2,4",
    downsample: Annotated[int, typer.Option(help="Train at this multiple of the 1 mm grid "
                                                 "(2 for a CPU demo).")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate (Adam).")] = 1e-3,
    init: Annotated[Init, typer.Option(help="default (Kaiming) or normal (the paper's "
                                            "N(0, 1)).")] = Init.DEFAULT,
    seed: Annotated[int, typer.Option(help="Seed of split, crops and weights.")] = 0,
    val_every: Annotated[int, typer.Option(help="Epochs between validations.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    bf16: Annotated[bool, typer.Option(help="bfloat16 autocast (GPU).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile (GPU).")]
    = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the 4D model on a site's cases (Site 1: dense labels) from random initialisation;
    writes the checkpoint that `lvtl artifact sign` takes and prints its path. Rerun to
    resume after an interruption."""
    from lvtl.model.train import TrainConfig, train_site
    from lvtl.study.protocol import parse_ints

    cfg = TrainConfig(epochs=epochs, samples_per_epoch=samples_per_epoch,
                      crop=parse_ints(crop, "crop", 4), lr=lr, seed=seed, val_every=val_every,
                      device=device, bf16=bf16, compile=compile_model, progress=progress)
    res = train_site(cache, out, cfg, filters=filters, blocks=parse_ints(blocks, "blocks"),
                     downsample=downsample, init=init, say=typer.echo)
    for case_id, why in res.excluded.items():
        err(f"{case_id}: {why}; excluded")
    typer.echo(f"best validation Dice {res.best_val_dice:.3f} at epoch {res.best_epoch}; "
               f"{res.seconds:.0f} s; crops took {100 * res.loading_share:.1f}% of step time")
    typer.echo(str(res.best_path))


@app.command()
def infer(
    case: Annotated[Path, typer.Argument(help="Case folder (dicom/, optional labels/).")],
    model: Annotated[Path, typer.Option(help="Signed artifact folder (with --trust or "
                                             "--config) or a checkpoint from lvtl train.")],
    out: Annotated[Path, typer.Option(help="Output folder: nifti/phase_NN.nii.gz and "
                                           "seg/phase_NN.dcm.")],
    trust: Annotated[Path | None, typer.Option(help="Trusted public key file or folder.")]
    = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config ([trust]).")] = None,
    phases: Annotated[str, typer.Option(help="all, or comma-separated 0-based phases.")]
    = "all",
    crop: Annotated[str, typer.Option(help="Window t,z,y,x (the model's training crop).")]
    = "16,64,96,96",
    seg: Annotated[bool, typer.Option(help="Also write DICOM SEG per phase.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Segment every (or the chosen) phase of a case: NIfTI label maps on the 1 mm grid and
    DICOM SEG objects referencing the source series, for a viewer."""
    from lvtl.artifact import load_model_source
    from lvtl.config import trust_store
    from lvtl.model.checkpoint import build_model
    from lvtl.model.infer import segment_case
    from lvtl.study.protocol import parse_ints

    store = trust_store(trust, config=config) if trust is not None or config is not None else None
    state, source_config = load_model_source(model, store)
    wanted = None if phases == "all" else _phase_list(phases)
    done, paths = segment_case(build_model(source_config, state), case, out,
                               parse_ints(crop, "crop", 4), phases=wanted, dicom_seg=seg,
                               device=device)
    typer.echo(f"{case.name}: {len(done)} phase(s) segmented; {len(paths)} file(s) in {out}")


def _phase_list(text: str) -> list[int]:
    from lvtl.errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--phases: expected 'all' or 0-based phases, got {text!r}") from None
