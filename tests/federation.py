"""A tiny federation on disk for the NVFlare tests: the sites' private data, a signed tiny
model, and each site's own config pinning the model owner's key."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import torch

from lvtl.artifact import keygen, sign
from lvtl.model.checkpoint import model_checkpoint
from lvtl.model.network import LVNet4d
from lvtl.model.train import TrainConfig, init_weights
from lvtl.synth.profiles import draw_case
from lvtl.synth.site import write_case

CROP = (2, 24, 32, 32)


def copy_drawn_case(site: str, index: int, parent: Path, name: str | None = None) -> Path:
    """A copy of synthetic case ``index`` of ``site`` (seed 0) as ``parent/name`` (default: the
    case's own name); the case itself is written once per test process (1,620 DICOM files,
    5-10 s each time) for every fixture that needs it."""
    case = _drawn_case(site, index)
    return Path(shutil.copytree(case, parent / (name or case.name)))


@functools.cache
def _drawn_case(site: str, index: int) -> Path:
    return write_case(draw_case(site, index, seed=0), _store() / site)


@functools.cache
def _store() -> Path:
    root = Path(tempfile.mkdtemp(prefix="lvtl-drawn-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def write_federation(root: Path, data_sites=("site-1", "site-2"), config_sites=None,
                     case_name: Callable[[int, int], str] | None = None) -> list[str]:
    """Three synthetic cases per site of ``data_sites`` in ``root/data/<site>`` (folders named
    ``case_name(site index, case index)`` when given), the signed model ``root/artifact``
    (key in ``root/owner-keys``), and ``root/sites/<site>/site.toml`` for every site of
    ``config_sites`` (default: the data sites). Returns what identifies the data: case folder
    names, patient and study identifiers, the sites' data paths."""
    secrets = []
    for s, site in enumerate(data_sites):
        secrets.append(str(root / "data" / site))
        for i in range(3):
            dest = copy_drawn_case(site, i, root / "data" / site,
                                   case_name(s, i) if case_name else None)
            ds = pydicom.dcmread(next((dest / "dicom").iterdir()), stop_before_pixels=True)
            secrets += [dest.name, str(ds.PatientID), str(ds.PatientName),
                        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
    model = LVNet4d(init_filters=4, blocks_down=(1, 1), groups=4)
    init_weights(model, "default", 0)
    torch.save(model_checkpoint(model, TrainConfig(crop=CROP), {}), root / "m.pt")
    keygen(root / "owner-keys")
    sign(root / "m.pt", root / "owner-keys" / "signing_key.pem", root / "artifact",
         name="lv4d", version="1.0.0")
    for site in config_sites or data_sites:
        d = root / "sites" / site
        (d / "trusted").mkdir(parents=True)
        for pub in (root / "owner-keys").glob("*.pub.pem"):
            shutil.copy(pub, d / "trusted")
        (d / "site.toml").write_text(
            f'[site]\nname = "{site}"\n[data]\nroot = "{root}/data/{site}"\n'
            f'cache = "{root}/cache/{site}"\n[trust]\nkeys = "trusted"\n'
            'min_version = "1.0.0"\n')
    return secrets
