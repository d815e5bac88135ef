"""Write a DICOM file-set: files in the usual CD layout and the DICOMDIR that lists them.

A CD or PACS export is a file-set (PS3.10): its files sit at ``PTxxxxxx/STxxxxxx/SExxxxxx/
IMxxxxxx`` (``SRxxxxxx`` for a structured report; patient, study and series numbered from 0
in the order they first come, no suffix), and ``DICOMDIR`` at the root holds one PATIENT,
STUDY and SERIES directory record per patient, study and series and an IMAGE or SR DOCUMENT
record per file, with the keys PS3.3 Annex F asks for, linked by byte offsets. pydicom's
:class:`~pydicom.fileset.FileSet` reads it back; it also writes one, but adding a file costs
it a search of every file added before, which takes minutes for a paper-size study.
"""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import ItemDelimiterTag, ItemTag, SequenceDelimiterTag
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

#: Directory record keys (PS3.3 F.5) taken from each file, by record type.
KEYS = {
    "PATIENT": ["PatientName", "PatientID"],
    "STUDY": ["StudyDate", "StudyTime", "StudyDescription", "StudyInstanceUID", "StudyID",
              "AccessionNumber"],
    "SERIES": ["Modality", "SeriesInstanceUID", "SeriesNumber"],
    "IMAGE": ["InstanceNumber"],
    "SR DOCUMENT": ["InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate",
                    "ContentTime", "ConceptNameCodeSequence"],
}


class _Node:
    """A directory record and the records below it."""

    def __init__(self, record: Dataset):
        self.record, self.children = record, {}


class FileSetWriter:
    """The files of a DICOM file-set under ``root`` and, once :meth:`write` is called, its
    DICOMDIR."""

    def __init__(self, root: Path, file_set_id: str = "LVTL"):
        self.root, self.file_set_id = Path(root), file_set_id
        self.patients: dict[str, _Node] = {}

    def add(self, ds: Dataset) -> Path:
        """Save ``ds`` (with its file meta) in the file-set; returns its path."""
        patient = _child(self.patients, ds.PatientID, "PATIENT", ds)
        study = _child(patient.children, ds.StudyInstanceUID, "STUDY", ds)
        series = _child(study.children, ds.SeriesInstanceUID, "SERIES", ds)
        kind = "SR DOCUMENT" if ds.Modality == "SR" else "IMAGE"
        file_id = [f"PT{list(self.patients).index(ds.PatientID):06d}",
                   f"ST{list(patient.children).index(ds.StudyInstanceUID):06d}",
                   f"SE{list(study.children).index(ds.SeriesInstanceUID):06d}",
                   f"{kind[:2]}{len(series.children):06d}"]
        leaf = _record(kind, ds)
        if kind == "SR DOCUMENT":  # only the root's concept modifiers (F.5.22)
            leaf.ContentSequence = [c for c in ds.ContentSequence
                                    if c.RelationshipType == "HAS CONCEPT MOD"]
        leaf.ReferencedFileID = file_id
        leaf.ReferencedSOPClassUIDInFile = ds.SOPClassUID
        leaf.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
        leaf.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
        series.children[ds.SOPInstanceUID] = _Node(leaf)
        path = self.root.joinpath(*file_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    def write(self) -> Path:
        """Write ``root/DICOMDIR`` listing every file added; returns its path."""
        order: list[tuple[_Node, list[_Node]]] = []  # (node, its siblings), depth first

        def visit(nodes: list[_Node]) -> None:
            for node in nodes:
                order.append((node, nodes))
                visit(list(node.children.values()))

        top = list(self.patients.values())
        visit(top)
        uid = generate_uid(entropy_srcs=["DICOMDIR", *(n.record.get("StudyInstanceUID", "")
                                                        for n, _ in order)])
        positions = self._encode([n for n, _ in order], None, uid)[1]
        at = {id(n): p for (n, _), p in zip(order, positions, strict=True)}
        for node, siblings in order:
            i = siblings.index(node)
            node.record.OffsetOfTheNextDirectoryRecord = \
                at[id(siblings[i + 1])] if i + 1 < len(siblings) else 0
            kids = list(node.children.values())
            node.record.OffsetOfReferencedLowerLevelDirectoryEntity = \
                at[id(kids[0])] if kids else 0
        data, again = self._encode([n for n, _ in order], (at[id(top[0])], at[id(top[-1])]),
                                   uid)
        if again != positions:  # offsets are fixed-size (UL): filling them moves nothing
            raise RuntimeError("DICOMDIR records moved while their offsets were filled in")
        path = self.root / "DICOMDIR"
        path.write_bytes(data)
        return path

    def _encode(self, nodes: list[_Node], root: tuple[int, int] | None, uid: str
                ) -> tuple[bytes, list[int]]:
        """The DICOMDIR's bytes (explicit VR little endian, undefined-length items) and the
        offset of each record's item; ``root`` is the first and last top-level record's
        offsets, ``uid`` the DICOMDIR's SOP instance UID."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        head = Dataset()
        head.FileSetID = self.file_set_id
        head.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = root[0] if root else 0
        head.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = root[1] if root else 0
        head.FileSetConsistencyFlag = 0
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        write_dataset(fp, head)
        fp.write_tag(0x00041220)  # Directory Record Sequence, SQ, undefined length
        fp.write(b"SQ\x00\x00")
        fp.write_UL(0xFFFFFFFF)
        positions = []
        for node in nodes:
            positions.append(fp.tell())
            fp.write_tag(ItemTag)
            fp.write_UL(0xFFFFFFFF)
            write_dataset(fp, node.record)
            fp.write_tag(ItemDelimiterTag)
            fp.write_UL(0)
        fp.write_tag(SequenceDelimiterTag)
        fp.write_UL(0)
        return fp.getvalue(), positions


def _child(nodes: dict[str, _Node], key: str, kind: str, ds: Dataset) -> _Node:
    """The node ``key`` among ``nodes``, made from ``ds`` the first time."""
    if key not in nodes:
        nodes[key] = _Node(_record(kind, ds))
    return nodes[key]


def _record(kind: str, ds: Dataset) -> Dataset:
    """A directory record of type ``kind`` with the keys of ``ds`` (offsets to be set)."""
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    for key in KEYS[kind]:
        record[key] = copy.deepcopy(ds[key])  # ds may change after (one object, many slices)
    return record
