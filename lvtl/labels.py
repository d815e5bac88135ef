"""The label map: values, names, codes and label-file naming — the one home of these facts.

0 background, 1 LV blood pool, 2 LV myocardium (the label-map contract). Results use the short
keys ``blood_pool`` and ``lvm`` (the paper's LVM); artifacts the long names; DICOM SEG the
SNOMED CT codes below. A case's label file of 0-based phase ``NN`` is ``labels/phase_NN.nii.gz``.
No lvtl imports.
"""

from __future__ import annotations

import re

BACKGROUND, BLOOD_POOL, MYOCARDIUM = 0, 1, 2
N_CLASSES = 3

#: Result keys of the foreground labels, in label order (the keys of Dice in results).
KEYS: dict[str, int] = {"blood_pool": BLOOD_POOL, "lvm": MYOCARDIUM}

#: Label value -> name, as an artifact's manifest records it.
NAMES: dict[str, str] = {str(BACKGROUND): "background", str(BLOOD_POOL): "lv_blood_pool",
                         str(MYOCARDIUM): "lv_myocardium"}

#: DICOM SEG segments: (label value, segment label, SNOMED CT code, code meaning).
#: (SNOMED CT has no concept for the LV cavity alone: it is coded as the left ventricle, as
#: segmentation tools do, and named by its label.)
SEG_SEGMENTS = ((BLOOD_POOL, "LV blood pool", "87878005", "Left ventricle"),
                (MYOCARDIUM, "LV myocardium", "49848007", "Left ventricle myocardium"))

#: A label file of a case: ``phase_NN.nii`` or ``phase_NN.nii.gz``, NN the 0-based phase.
LABEL_FILE = re.compile(r"^phase_(\d+)\.nii(\.gz)?$")


def label_file_name(phase: int, suffix: str = ".nii.gz") -> str:
    """File name of the label file (or prediction) of 0-based ``phase``."""
    return f"phase_{phase:02d}{suffix}"


__all__ = ["BACKGROUND", "BLOOD_POOL", "MYOCARDIUM", "N_CLASSES", "KEYS", "NAMES",
           "SEG_SEGMENTS", "LABEL_FILE", "label_file_name"]
