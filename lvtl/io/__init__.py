"""Input and output: geometry, DICOM (read and write), NIfTI, DICOM SEG, atomic writes."""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "geometry": "Geometry",
    "dicom": "load_series scan_series SeriesIndex",
    "dicom_write": "SeriesInfo write_phase write_study new_uid Layout TransferSyntax",
    "nifti": "read_volume write_volume",
    "seg": "write_seg",
    "seg_read": "read_seg seg_labelmap segment_roles RoleMapping Role SegLabels place_on "
                "check_frame_of_reference",
    "nrrd": "read_nrrd nrrd_labelmap nrrd_geometry NrrdLabels",
    "rtstruct": "read_rtstruct labels_from_rtstruct rasterise write_rtstruct",
    "atomic": "atomic_path write_text write_bytes copy_file replace_dir",
})
