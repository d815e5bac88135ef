"""Site profiles and the parameters of one synthetic case, drawn from a seed.

A :class:`SiteProfile` says how one hospital differs from another: scanner (vendor, kernel,
kVp, patient position, grid per :class:`Size`), how its DICOM comes out (layout, transfer
syntax, CD/PACS export), contrast protocol (blood, myocardium and right-ventricle HU ranges),
image quality (noise in HU, blur in mm) and labelling protocol (every other phase or ED and ES
only). :func:`draw_case` draws everything that defines case
``index`` of a site (grid, LV pose and shape at end-diastole in LPS mm, motion, appearance)
into a frozen :class:`CaseParams`; the same ``(site, index, seed, size)`` always gives the same
parameters. The modules above this one turn the parameters into anatomy, images and labels.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np

from lvtl.errors import ConfigError, choose

#: Cardiac phases of a case (0 to 19), evenly spaced over the R-R interval.
N_PHASES = 20


# --------------------------------------------------------------------------- site profiles
class Size(StrEnum):
    """Scanner grid of a synthetic case."""

    SMALL = "small"  # fast: tests and the demo
    PAPER = "paper"  # the paper's: 512 x 512 at 0.5 mm, 0.7 mm slices


@dataclass(frozen=True)
class Acquisition:
    """Scanner grid for one size: matrix, pixel spacing range and slice spacing."""

    matrix: int
    pixel_mm: tuple[float, float]
    slice_mm: float
    slices: tuple[int, int]
    slice_thickness_mm: float


@dataclass(frozen=True)
class SiteProfile:
    """How one hospital's scanners, protocol and annotators differ from another's."""

    name: str
    default_cases: int
    dense_labels: bool  # every other phase (plus ED, ES) instead of ED and ES only
    manufacturer: str
    model: str
    kernel: str
    kvp: float
    patient_position: str  # HFS or FFS
    blood_hu: tuple[float, float]
    myo_hu: tuple[float, float]
    rv_ratio: tuple[float, float]  # right-ventricular blood HU over LV blood HU (contrast protocol)
    noise_hu: tuple[float, float]
    blur_mm: tuple[float, float]  # Gaussian sigma of the reconstruction kernel, in-plane
    slice_blur_mm: float  # Gaussian sigma of the slice sensitivity profile
    rescale_intercept: float
    sizes: dict[str, Acquisition] = field(default_factory=dict)
    # How the site's DICOM comes out: values of lvtl.io.dicom_write's Layout and
    # TransferSyntax (text here, so the CLI's start-up need not import pydicom), and whether
    # each case is a CD/PACS export (DICOMDIR, localizer, dose report, second reconstruction).
    layout: str = "one-series"
    transfer_syntax: str = "explicit"
    export: bool = False


SITES: dict[str, SiteProfile] = {
    "site-1": SiteProfile(
        name="site-1",
        default_cases=61,
        dense_labels=True,
        manufacturer="SIEMENS",
        model="SOMATOM Force",
        kernel="Bv36",
        kvp=100.0,
        patient_position="HFS",
        blood_hu=(370.0, 450.0),
        myo_hu=(100.0, 150.0),
        # Coronary CTA with a saline chaser: the chaser washes the contrast out of the right
        # heart by the time the left heart is scanned, so the RV is only faintly opacified.
        rv_ratio=(0.30, 0.50),
        noise_hu=(20.0, 27.0),
        blur_mm=(0.45, 0.6),
        slice_blur_mm=0.35,
        rescale_intercept=-1024.0,
        sizes={
            "small": Acquisition(96, (1.30, 1.45), 1.5, (64, 72), 1.5),
            "paper": Acquisition(512, (0.40, 0.46), 0.6, (170, 280), 0.6),
        },
    ),
    "site-2": SiteProfile(
        name="site-2",
        default_cases=95,
        dense_labels=False,
        manufacturer="SIEMENS",
        model="SOMATOM Definition AS+",
        kernel="B46f",
        kvp=120.0,
        patient_position="FFS",
        blood_hu=(300.0, 370.0),
        myo_hu=(80.0, 120.0),
        # Retrospectively gated functional scan with a contrast-saline mix after the bolus: the
        # RV stays opacified (for RV function), as bright as the LV blood pool or nearly.
        rv_ratio=(0.80, 1.00),
        noise_hu=(30.0, 40.0),
        blur_mm=(0.8, 1.0),
        slice_blur_mm=0.6,
        rescale_intercept=0.0,
        sizes={
            "small": Acquisition(112, (1.15, 1.25), 2.0, (50, 56), 2.0),
            "paper": Acquisition(512, (0.50, 0.50), 0.7, (146, 249), 0.75),
        },
    ),
    # A third receiving hospital for the federated arm (issue 17): another vendor, a newer
    # scanner with low noise and a sharper kernel, a biphasic injection that leaves the right
    # ventricle half opacified (between site 1 and site 2), and labels at ED and ES only.
    "site-3": SiteProfile(
        name="site-3",
        default_cases=40,
        dense_labels=False,
        manufacturer="GE MEDICAL SYSTEMS",
        model="Revolution CT",
        kernel="STANDARD",
        kvp=100.0,
        patient_position="HFS",
        blood_hu=(420.0, 520.0),
        myo_hu=(110.0, 160.0),
        rv_ratio=(0.55, 0.75),
        noise_hu=(12.0, 18.0),
        blur_mm=(0.5, 0.7),
        slice_blur_mm=0.4,
        rescale_intercept=-1024.0,
        sizes={
            "small": Acquisition(104, (1.25, 1.35), 1.25, (80, 88), 1.25),
            "paper": Acquisition(512, (0.35, 0.42), 0.625, (180, 260), 0.625),
        },
        layout="one-series",
        transfer_syntax="jpeg-lossless",
    ),
}


def get_site(name: str) -> SiteProfile:
    """The profile of ``name``; a clear error listing the known sites otherwise."""
    if name not in SITES:
        raise ConfigError(f"unknown site {name!r}; choose one of: {', '.join(SITES)}")
    return SITES[name]


# --------------------------------------------------------------------------- case parameters
@dataclass(frozen=True)
class CaseParams:
    """Everything that defines one synthetic case; all drawn from one seed."""

    case_id: str
    site: str
    size: str
    seed: int
    # grid
    rows: int
    cols: int
    slices: int
    pixel_mm: float
    slice_mm: float
    fov_centre: tuple[float, float, float]
    # LV anatomy at end-diastole (mm)
    apex: tuple[float, float, float]
    axis: tuple[float, float, float]  # unit, apex -> base
    ref: tuple[float, float, float]  # unit, perpendicular to axis, towards the septum
    a_ed: float
    b_ed: float
    base_frac: float  # base plane height / a
    t0: float
    t_a1: float
    t_phi1: float
    t_a2: float
    t_phi2: float
    t_apex_taper: float
    # motion
    ed: int
    es: int
    ef: float
    long_shortening: float
    # appearance
    blood_hu: float
    myo_hu: float
    rv_ratio: float
    noise_hu: float
    blur_mm: float
    heart_rate: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stable_seed(self) -> int:
        """Seed of the case's pixel noise and annotator errors: a CRC of its identity, the same
        in every process (unlike ``hash``)."""
        return zlib.crc32(f"{self.case_id}/{self.seed}/{self.size}".encode())


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix: uniform axis, angle uniform in +-``max_deg`` degrees."""
    axis = _unit(rng.normal(size=3))
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


def draw_case(site: str, index: int, seed: int = 0, size: Size | str = Size.SMALL) -> CaseParams:
    """Draw the parameters of case ``index`` of ``site`` from ``seed`` (deterministic)."""
    prof = get_site(site)
    size = choose(Size, size, "size")
    acq = prof.sizes[size]
    site_code = int(site.rsplit("-", 1)[-1]) if site.rsplit("-", 1)[-1].isdigit() else 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, site_code, index]))
    # Pose: apex points left, anterior and inferior (LPS: +x, -y, -z), +-15 degrees.
    apex_dir = _rotation(rng, 15.0) @ _unit(np.array([0.55, -0.5, -0.67]))
    axis = -apex_dir
    ref = _unit(np.cross(axis, [0.0, 0.0, 1.0]))  # horizontal, perpendicular to the long axis
    if ref @ np.array([-1.0, -1.0, 0.0]) < 0:  # septum faces the patient's right-anterior
        ref = -ref
    a_ed = rng.uniform(44.0, 54.0)
    b_ed = rng.uniform(24.0, 29.0)
    base_frac = rng.uniform(1.3, 1.5)
    lv_centre = np.array([35.0, 30.0, -120.0]) + rng.normal(0, 6, 3)
    apex = lv_centre - axis * (0.6 * base_frac * a_ed)
    fov_centre = lv_centre + rng.normal(0, 4, 3) + np.array([-8.0, 0.0, 0.0])
    ed = int(rng.choice([0, 1, 19]))
    es = (ed + int(rng.choice([6, 7, 8]))) % N_PHASES
    pixel = float(rng.uniform(*acq.pixel_mm))
    return CaseParams(
        case_id=f"{site}-{index:03d}",
        site=site,
        size=size,
        seed=seed,
        rows=acq.matrix,
        cols=acq.matrix,
        slices=int(rng.integers(acq.slices[0], acq.slices[1] + 1)),
        pixel_mm=round(pixel, 4),
        slice_mm=acq.slice_mm,
        fov_centre=tuple(float(v) for v in fov_centre),
        apex=tuple(float(v) for v in apex),
        axis=tuple(float(v) for v in axis),
        ref=tuple(float(v) for v in ref),
        a_ed=a_ed,
        b_ed=b_ed,
        base_frac=base_frac,
        t0=rng.uniform(7.9, 9.0),
        t_a1=rng.uniform(0.08, 0.16),
        t_phi1=rng.uniform(0, 2 * np.pi),
        t_a2=rng.uniform(0.0, 0.06),
        t_phi2=rng.uniform(0, 2 * np.pi),
        t_apex_taper=rng.uniform(0.12, 0.22),
        ed=ed,
        es=es,
        ef=rng.uniform(0.50, 0.70),
        long_shortening=rng.uniform(0.16, 0.22),
        blood_hu=rng.uniform(*prof.blood_hu),
        myo_hu=rng.uniform(*prof.myo_hu),
        rv_ratio=rng.uniform(*prof.rv_ratio),
        noise_hu=rng.uniform(*prof.noise_hu),
        blur_mm=rng.uniform(*prof.blur_mm),
        heart_rate=rng.uniform(55, 75),
    )
