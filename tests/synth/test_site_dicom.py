"""How a synthetic site's DICOM comes out: the profiles' defaults, a case written in another
layout, syntax and as an export, and the choices checked where they enter (library and CLI)."""

import dataclasses

import numpy as np
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import EnhancedCTImageStorage, JPEGLSLossless
from typer.testing import CliRunner

from lvtl.errors import ConfigError
from lvtl.io.dicom_write import Layout, TransferSyntax
from lvtl.synth.case import Case
from lvtl.synth.profiles import N_PHASES, SITES, draw_case
from lvtl.synth.site import dicom_options, generate_site, write_case


def tiny_case():
    """Case 0 of site-1 on a coarse 8 x 24 x 28 grid (fast to render)."""
    return dataclasses.replace(draw_case("site-1", 0), rows=24, cols=28, slices=8,
                               pixel_mm=3.5, slice_mm=7.0)


@pytest.mark.parametrize("name", sorted(SITES))
def test_profiles_keep_todays_output_and_name_real_choices(name):
    prof = SITES[name]
    # sites 1 and 2 keep the output they always had; site 3 exports JPEG Lossless
    syntax = TransferSyntax.JPEG_LOSSLESS if name == "site-3" else TransferSyntax.EXPLICIT
    assert dicom_options(prof, None, None, None) == (Layout.ONE_SERIES, syntax, False)
    assert dicom_options(prof, "enhanced", "rle", True) == (Layout.ENHANCED,
                                                             TransferSyntax.RLE, True)


def test_write_case_as_an_enhanced_export(tmp_path):
    params = tiny_case()
    case_dir = write_case(params, tmp_path, layout="enhanced", transfer_syntax="jpeg-ls",
                          export=True)
    dicom = case_dir / "dicom"
    assert (dicom / "DICOMDIR").is_file() and (case_dir / "truth" / "case.json").is_file()
    assert [p.name for p in case_dir.parent.iterdir()] == [case_dir.name]  # no temporaries
    (main,) = FileSet(dicom / "DICOMDIR").find(SeriesNumber=1)
    ds = main.load()
    assert ds.SOPClassUID == EnhancedCTImageStorage
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert ds.NumberOfFrames == N_PHASES * params.slices
    intercept = float(ds.SharedFunctionalGroupsSequence[0]
                      .PixelValueTransformationSequence[0].RescaleIntercept)
    case = Case(params)
    es = ds.pixel_array[params.es * params.slices:(params.es + 1) * params.slices] + intercept
    assert np.array_equal(es, np.rint(case.render(params.es, 0, params.slices)))


def test_generate_site_refuses_a_bad_choice_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'series-per-phase'"):
        generate_site("site-2", 1, tmp_path / "out", layout="series-per-fase")
    with pytest.raises(ConfigError, match="explicit, jpeg-lossless"):
        generate_site("site-2", 1, tmp_path / "out", transfer_syntax="jpeg2000")
    assert not (tmp_path / "out").exists()


def test_phantom_command_passes_the_dicom_options(monkeypatch, tmp_path):
    from lvtl.cli import app
    from lvtl.synth import site

    seen = {}

    def fake(site_name, cases, out, **kw):
        seen.update(kw)
        return [("site-1-000", None)]

    monkeypatch.setattr(site, "generate_site", fake)
    r = CliRunner().invoke(app, ["phantom", "--site", "site-1", "--out", str(tmp_path),
                                 "--layout", "series-per-phase", "--transfer-syntax",
                                 "jpeg-lossless", "--export"])
    assert r.exit_code == 0, r.output
    assert (seen["layout"], seen["transfer_syntax"], seen["export"]) == (
        "series-per-phase", "jpeg-lossless", True)
    CliRunner().invoke(app, ["phantom", "--site", "site-1", "--out", str(tmp_path)])
    assert (seen["layout"], seen["transfer_syntax"], seen["export"]) == (None, None, None)
    help_text = "".join(CliRunner().invoke(app, ["phantom", "--help"]).output.split())
    for choice in [*Layout, *TransferSyntax]:  # the help names every choice
        assert choice.value in help_text, choice
