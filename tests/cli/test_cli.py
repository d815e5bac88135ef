"""The real ``lvtl`` console script, run as a user would."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LVTL = [str(Path(sys.executable).parent / "lvtl")]
if not Path(LVTL[0]).exists():  # pragma: no cover - an environment without the script
    LVTL = [sys.executable, "-m", "lvtl.cli"]


def run(*args, cwd=None, env=None):
    return subprocess.run(LVTL + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=1200)


@pytest.mark.parametrize("cmd", ["phantom", "inspect", "preprocess", "thickness", "agreement",
                                 "demo"])
def test_help_for_each_command(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and "Usage: lvtl " + cmd in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("lvtl ")


def test_inspect_json_contract(site2_case):
    r = run("inspect", site2_case, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["phases"] == 20
    assert info["shape"][0] == 20 and len(info["shape"]) == 4
    assert len(info["spacing"]) == 3 and info["spacing"][0] == 2.0
    assert info["orientation"]["axes"] == "IPR"
    assert info["labelled_phases"] and info["problems"] == []
    lo, hi = info["hu_range"]
    assert lo < -800 and 300 < hi < 800


def test_inspect_text_and_dicom_folder(site1_case):
    r = run("inspect", site1_case / "dicom")
    assert r.returncode == 0
    for word in ("phases       20", "spacing", "orientation  SPL", "HU range"):
        assert word in r.stdout


def test_phantom_then_preprocess_with_site_config(tmp_path):
    r = run("phantom", "--site", "site-2", "--cases", "1", "--seed", "3", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "1 site-2 cases" in r.stdout
    assert (tmp_path / "d" / "site-2-000" / "dicom").is_dir()
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "site-2"\n[data]\nroot = "d"\ncache = "c"\n'
                   '[preprocess]\nrepair_radius = 4\n')
    r = run("preprocess", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["counts"] == {"written": 1, "cached": 0, "failed": 0}
    meta = json.loads((tmp_path / "c" / "site-2-000" / "meta.json").read_text())
    assert meta["config"]["repair_radius"] == 4
    r = run("preprocess", "--config", cfg, "--repair-radius", "4")
    assert "0 written, 1 cached" in r.stdout
    # the environment names the data root instead of the file
    shutil.move(tmp_path / "d", tmp_path / "elsewhere")
    r = run("preprocess", "--config", cfg, "--out", tmp_path / "c2",
            env={"LVTL_DATA_ROOT": str(tmp_path / "elsewhere")})
    assert r.returncode == 0 and "1 written" in r.stdout


@pytest.mark.parametrize("args,code,words", [
    (["phantom", "--site", "site-7", "--out", "x"], 2, ["site-7", "site-1, site-2"]),
    (["phantom", "--site", "site-1", "--out", "x", "--size", "big"], 2, ["--size"]),
    (["phantom", "--site", "site-1", "--out", "x", "--cases", "0"], 2, ["at least 1"]),
    (["inspect", "/no/such/folder"], 3, ["/no/such/folder", "not a folder"]),
    (["preprocess", "/no/such/folder", "--out", "x"], 2, ["/no/such/folder"]),
    (["preprocess", "--config", "/no/such.toml"], 2, ["/no/such.toml"]),
    (["preprocess", "."], 2, ["--out"]),
])
def test_errors_are_one_clear_line(tmp_path, args, code, words):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr
    if code != 2 or "--size" not in words:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = run("--debug", "phantom", "--site", "site-7", "--out", tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_thickness_on_phantom_labels(site2_case):
    meta = json.loads((site2_case / "truth" / "case.json").read_text())
    ed = meta["ed_phase"]
    label = site2_case / "truth" / "labels" / f"phase_{ed:02d}.nii.gz"
    r = run("thickness", label, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["method"] == "streamline" and out["n_points"] > 500
    assert 5.0 < out["median"] < 11.0 and out["median"] <= out["p95"] <= out["max"]
    r = run("thickness", label)
    assert r.returncode == 0 and "median" in r.stdout and "mm" in r.stdout


def test_thickness_of_an_empty_label_is_one_clear_error(tmp_path, site2_case):
    import numpy as np

    from lvtl.io.nifti import read_volume, write_volume

    lab, geom = read_volume(next((site2_case / "labels").iterdir()))
    write_volume(tmp_path / "empty.nii.gz", np.zeros_like(lab), geom)
    r = run("thickness", tmp_path / "empty.nii.gz")
    assert r.returncode == 6 and "Traceback" not in r.stderr
    assert "empty.nii.gz" in r.stderr and "no myocardium" in r.stderr


def test_agreement_between_two_raters(tmp_path, site2_case):
    """Rater A: the clean truth; rater B: the repaired flood-fill labels of the same phases."""
    from lvtl.data.repair import repair_labels
    from lvtl.io.nifti import read_volume, write_volume

    a, b = tmp_path / "a", tmp_path / "b"
    for f in sorted((site2_case / "labels").iterdir()):
        lab, geom = read_volume(f)
        write_volume(b / f.name, repair_labels(lab), geom)
        truth, g2 = read_volume(site2_case / "truth" / "labels" / f.name)
        write_volume(a / f.name, truth, g2)
    r = run("agreement", a, b, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["summary"]["n"] == 2 and not rep["skipped"]
    assert rep["summary"]["dice"]["blood_pool"]["mean"] > 0.95
    assert rep["summary"]["dice"]["lvm"]["mean"] > 0.95
    assert abs(rep["summary"]["thickness_diff"]["median"]["mean"]) < 1.0
    assert "bland_altman" in rep["summary"]


def test_thickness_of_one_phase_of_a_4d_file(tmp_path, site2_case):
    import nibabel as nib
    import numpy as np

    meta = json.loads((site2_case / "truth" / "case.json").read_text())
    ed, es = meta["ed_phase"], meta["es_phase"]
    imgs = [nib.load(site2_case / "truth" / "labels" / f"phase_{t:02d}.nii.gz") for t in (ed, es)]
    four = nib.Nifti1Image(np.stack([np.asarray(i.dataobj) for i in imgs], axis=-1),
                           imgs[0].affine)
    nib.save(four, tmp_path / "labels4d.nii.gz")
    r = run("thickness", tmp_path / "labels4d.nii.gz", "--phase", 1, "--json")
    assert r.returncode == 0, r.stderr
    es_json = json.loads(r.stdout)
    r = run("thickness", tmp_path / "labels4d.nii.gz", "--phase", 0, "--json")
    ed_json = json.loads(r.stdout)
    assert es_json["median"] > ed_json["median"] + 2.0  # systolic thickening
    r = run("thickness", tmp_path / "labels4d.nii.gz")
    assert r.returncode == 4 and "--phase" in r.stderr


@pytest.mark.slow
def test_demo_tells_the_whole_story_and_prints_the_report_last(tmp_path):
    """`lvtl demo` at a tiny scale: synthetic sites, pretraining, signing, the NVFlare
    simulator job with site-1 and site-2, the report path as the last line."""
    r = run("demo", "--out", tmp_path / "demo", "--site1-cases", "3", "--site2-cases", "4",
            "--pretrain-epochs", "2", "--study-epochs", "1", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    report = Path(lines[-1])
    assert report.name == "report.json" and report.is_file()
    doc = json.loads(report.read_text())
    assert {s: v["status"] for s, v in doc["sites"].items()} == {"site-1": "ok", "site-2": "ok"}
    for step in ("pretrained the 4D model", "signed best.pt", "NVFlare simulator",
                 "[site-2] baseline",
                 # each site's cases are real-looking exports, read as such
                 "[site-1] inspect site-1-000: one series per phase",
                 "[site-2] inspect site-2-000: enhanced"):
        assert any(step in ln for ln in lines), step
    assert sum("skipped 1 DICOMDIR, 1 localizer" in ln for ln in lines) == 2
    site2 = tmp_path / "demo" / "data" / "site-2"
    assert {p.suffix for p in site2.glob("*/labels/*")} == {".dcm"}  # RTSTRUCT contours
    # the private key stays with the model owner; sites pin only the public key
    assert [p.parent.name for p in (tmp_path / "demo").rglob("signing_key.pem")] == ["owner-keys"]
    assert all(p.name.endswith(".pub.pem") for p in (tmp_path / "demo" / "sites").rglob("*.pem"))
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["report"] == str(report)
