"""Writing synthetic cases and sites to disk.

A case folder ``<out>/<case_id>/`` holds ``dicom/`` (the 4D study: every phase, in the layout
and transfer syntax of the site's profile or the caller's, optionally as a CD/PACS export with
a DICOMDIR, as :func:`lvtl.io.dicom_write.write_study` writes it), ``labels/`` (the
annotator's labels of the labelled phases, NIfTI, named by
:func:`~lvtl.labels.label_file_name`) and ``truth/`` (the clean labels of those phases, the
analytic wall thickness at ED and ES in mm, and ``case.json`` with the parameters, the ED/ES
phases and the blood-pool and myocardium volumes in mL). A site is ``n`` such folders, cases
``0..n-1`` of one seed, written in parallel.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from enum import StrEnum
from pathlib import Path

import numpy as np

from lvtl.errors import ConfigError, choose
from lvtl.io import dicom_write as dcm
from lvtl.io.dicom import scan_series
from lvtl.io.nifti import write_volume
from lvtl.io.nrrd import write_nrrd
from lvtl.io.rtstruct import write_rtstruct
from lvtl.io.seg import write_seg
from lvtl.labels import BLOOD_POOL, MYOCARDIUM, label_file_name
from lvtl.parallel import map_cases
from lvtl.synth.case import Case
from lvtl.synth.contours import contours_from_case
from lvtl.synth.profiles import N_PHASES, CaseParams, SiteProfile, Size, draw_case, get_site

log = logging.getLogger(__name__)


class LabelOutput(StrEnum):
    """The format of a synthetic case's label files, as sites' contouring tools write them."""

    NIFTI = "nifti"  # the annotator's flood-filled masks, phase_NN.nii.gz
    NRRD = "nrrd"  # the same masks, phase_NN.nrrd
    SEG = "seg"  # the same masks as a DICOM SEG referencing the phase's images
    RTSTRUCT = "rtstruct"  # the endocardial and epicardial contours (analytic) as drawn


def _write_labels(folder: Path, case: Case, phase: int, labels: np.ndarray,
                  fmt: LabelOutput, info, index) -> None:
    """One labelled phase's file in ``fmt``."""
    g = case.geometry
    if fmt is LabelOutput.NIFTI:
        write_volume(folder / label_file_name(phase), labels, g)
    elif fmt is LabelOutput.NRRD:
        write_nrrd(folder / label_file_name(phase, ".nrrd"), labels, g)
    elif fmt is LabelOutput.SEG:
        write_seg(folder / label_file_name(phase, ".dcm"), labels, index, phase)
    else:
        endo, epi = contours_from_case(case, phase)
        write_rtstruct(folder / label_file_name(phase, ".dcm"), endo=endo, epi=epi,
                       slices=index.phases[phase], series_uid=index.phases[phase][0].series_uid,
                       study_uid=info.study_uid,
                       frame_of_reference=info.frame_of_reference_uid,
                       header=index.first_header,
                       sop_uid=dcm.new_uid(f"{info.series_uid}/rtstruct/{phase}"))


def write_case(params: CaseParams, out: str | Path, *, overwrite: bool = False,
               layout: dcm.Layout | str | None = None,
               transfer_syntax: dcm.TransferSyntax | str | None = None,
               export: bool | None = None, labels: LabelOutput | str = LabelOutput.NIFTI
               ) -> Path:
    """Write one case folder: ``dicom/`` (the 4D study), ``labels/`` (flood-fill style masks
    of the labelled phases) and ``truth/`` (clean labels, analytic thickness, parameters).

    The folder appears atomically (built under a temporary name, then renamed); an existing
    complete case is kept unless ``overwrite``.

    Args:
        params: the case (:func:`~lvtl.synth.profiles.draw_case`).
        out: the folder to write the case folder into.
        overwrite: rewrite a case that exists.
        layout: how the phases are split into series (default: the site profile's).
        transfer_syntax: the DICOM encoding (default: the site profile's).
        export: write ``dicom/`` as a CD/PACS export (default: the site profile's).
        labels: the format of ``labels/`` (:class:`LabelOutput`); ``truth/`` is NIfTI always.
    """
    labels = choose(LabelOutput, labels, "label format")
    out = Path(out)
    final = out / params.case_id
    if final.exists() and not overwrite:
        return final
    tmp = out / f".tmp-{params.case_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    case = Case(params)
    prof, g = case.profile, case.geometry
    layout, transfer_syntax, export = dicom_options(prof, layout, transfer_syntax, export)
    info = dcm.SeriesInfo(
        patient_id=params.case_id.upper(),
        patient_name=f"PHANTOM^{params.case_id.replace('-', '')}",
        study_uid=dcm.new_uid(f"study/{params.case_id}/{params.seed}"),
        series_uid=dcm.new_uid(f"series/{params.case_id}/{params.seed}"),
        frame_of_reference_uid=dcm.new_uid(f"for/{params.case_id}/{params.seed}"),
        manufacturer=prof.manufacturer,
        model=prof.model,
        kernel=prof.kernel,
        kvp=prof.kvp,
        patient_position=prof.patient_position,
        slice_thickness=prof.sizes[params.size].slice_thickness_mm,
        rescale_intercept=prof.rescale_intercept,
        heart_rate=params.heart_rate,
        n_phases=N_PHASES,
    )
    dcm.write_study(tmp / "dicom", case.phases_hu(), g, info, layout=layout,
                    transfer_syntax=transfer_syntax, export=export)
    volumes = {}
    index = (scan_series(tmp / "dicom") if labels in (LabelOutput.SEG, LabelOutput.RTSTRUCT)
             else None)
    for t in case.labelled_phases:
        truth, thick = case.truth(t)
        _write_labels(tmp / "labels", case, t, case.flood_fill_labels(truth, t), labels, info,
                      index)
        write_volume(tmp / "truth" / "labels" / label_file_name(t), truth, g)
        volumes[t] = (int((truth == BLOOD_POOL).sum()), int((truth == MYOCARDIUM).sum()))
        for name, ph in (("ed", params.ed), ("es", params.es)):
            if t == ph:
                write_volume(tmp / "truth" / f"thickness_{name}.nii.gz", thick, g)
    vox = float(np.prod(g.spacing)) / 1000.0  # mL
    meta = {
        "schema": "lvtl.phantom/1",
        "case_id": params.case_id,
        "site": params.site,
        "ed_phase": params.ed,
        "es_phase": params.es,
        "labelled_phases": case.labelled_phases,
        "ejection_fraction": params.ef,
        "blood_pool_ml": {str(t): v[0] * vox for t, v in volumes.items()},
        "myocardium_ml": {str(t): v[1] * vox for t, v in volumes.items()},
        "thickness_scale_es": case.state(params.es).k,
        "params": params.to_dict(),
    }
    (tmp / "truth" / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def dicom_options(profile: SiteProfile, layout: dcm.Layout | str | None,
                  transfer_syntax: dcm.TransferSyntax | str | None,
                  export: bool | None) -> tuple[dcm.Layout, dcm.TransferSyntax, bool]:
    """The layout, transfer syntax and export flag asked for, each defaulting to the site
    profile's; a ConfigError names a bad choice."""
    return (choose(dcm.Layout, layout or profile.layout, "layout"),
            choose(dcm.TransferSyntax, transfer_syntax or profile.transfer_syntax,
                   "transfer syntax"),
            profile.export if export is None else bool(export))


def _write_one(args: tuple) -> tuple[str, str | None]:
    """Draw and write one case (a worker job); ``(case_id, error or None)``."""
    site, index, seed, size, out, overwrite, (layout, syntax, export), labels = args
    params = draw_case(site, index, seed, size)
    try:
        write_case(params, out, overwrite=overwrite, layout=layout, transfer_syntax=syntax,
                   export=export, labels=labels)
        return params.case_id, None
    except Exception as e:  # reported per case; the others go on
        log.debug("case %s failed", params.case_id, exc_info=True)
        return params.case_id, f"{type(e).__name__}: {str(e).splitlines()[0]}"


def generate_site(site: str, n_cases: int | None, out: str | Path, *,
                  size: Size | str = Size.SMALL,
                  seed: int = 0, workers: int = 1, overwrite: bool = False,
                  progress: bool = False, layout: dcm.Layout | str | None = None,
                  transfer_syntax: dcm.TransferSyntax | str | None = None,
                  export: bool | None = None, labels: LabelOutput | str = LabelOutput.NIFTI,
                  export_cases: int | None = None) -> list[tuple[str, str | None]]:
    """Write ``n_cases`` cases of ``site`` under ``out``; returns ``(case_id, error)`` pairs.

    Args:
        site: the site profile's name.
        n_cases: how many cases (default: the profile's).
        out: the folder to write the case folders into.
        size: the scanner grid (:class:`~lvtl.synth.profiles.Size`).
        seed: the seed; the same seed gives the same cases.
        workers: parallel processes.
        overwrite: rewrite cases that exist.
        progress: show a progress bar.
        layout, transfer_syntax, export: the DICOM output, as :func:`write_case` takes them.
        labels: the label files' format (:class:`LabelOutput`).
        export_cases: with an export, only the first this many cases get its extras (a CD
            export of those exams); the others are written as their series alone (a PACS
            query). None: every case.
    """
    prof = get_site(site)
    labels = choose(LabelOutput, labels, "label format")
    size = choose(Size, size, "size")
    dicom = dicom_options(prof, layout, transfer_syntax, export)
    n = prof.default_cases if n_cases is None else int(n_cases)
    if n < 1:
        raise ConfigError(f"--cases must be at least 1, got {n}")
    Path(out).mkdir(parents=True, exist_ok=True)
    plain = (*dicom[:2], False)
    jobs = [(site, i, seed, size, str(out), overwrite,
             dicom if export_cases is None or i < export_cases else plain, labels)
            for i in range(n)]
    results = map_cases(_write_one, jobs, workers=workers, desc=f"phantom {site}",
                        progress=progress)
    return results
