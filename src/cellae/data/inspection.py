"""The report of ``cellae data inspect``: what a source holds before anything is trained on it.

Every file's header (and, for PNG and JPEG, its end marker) is read, so damaged files are
found without decoding the pixels, and a whole set is checked in seconds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from cellae.data.channels import select
from cellae.data.decode import BadImage
from cellae.data.sources import open_source
from cellae.data.sources.labels import unmatched_warning
from cellae.naming import natural_key, printable
from cellae.sections import DataConfig

# what every source's info() holds; inspect shows any other key a source adds
_COMMON_INFO = ("kind", "path", "layout")


def inspect_source(spec: str | Path | DataConfig) -> str:
    """A plain-text report: labels, counts per class and patient, channels and bit depth, image
    sizes, metadata columns, what was skipped."""
    data = spec if isinstance(spec, DataConfig) else DataConfig(source=str(spec))
    source = open_source(data)
    layout = source.channel_layout()
    kept = select(layout, list(data.channels), source.description)
    sizes: list[tuple[int, int]] = []
    good: list[int] = []
    for index, file in enumerate(source.files):
        try:
            sizes.append(source.probe(index))
        except BadImage as exc:
            source.skip(file, str(exc))
            continue
        good.append(index)
    labels = np.asarray(source.labels, dtype=np.int64)[good]
    patients = [source.patients[i] for i in good]
    named = {label: name for name, label in source.label_map.items()}
    lines = [f"source: {source.description} ({source.kind}, {source.layout})"]
    lines += [f"{key}: {value}" for key, value in source.info().items() if key not in _COMMON_INFO]
    lines.append("labels: " + ", ".join(
        f"{named[label]} = {name} = {label}" if named[label] != name else f"{name} = {label}"
        for label, name in enumerate(source.class_names)
    ))
    lines.append(f"channels: {len(layout.names)} ({', '.join(layout.names)})"
                 + (f", kept: {', '.join(layout.names[i] for i in kept)}"
                    if len(kept) != len(layout.names) or data.channels else ""))
    lines.append(f"bit depth: {layout.bits} ({layout.dtype})")
    lines.append(f"images: {len(good):,}")
    for label in range(len(source.class_names)):
        lines.append(f"  {named[label]}: {int((labels == label).sum()):,}")
    per_patient = Counter(patients)
    counts = sorted(per_patient.values())
    lines.append(f"patients: {len(per_patient):,}")
    if counts:
        lines.append(
            f"images per patient: min {counts[0]}, median {statistics.median(counts):g}, "
            f"max {counts[-1]}"
        )
    if source.unmatched_patients:
        lines.append(
            unmatched_warning(source.unmatched_patients, len(patients))
            or f"  {source.unmatched_patients} files have no patient id in their name "
               f"(not like C33P1thinF_...): each counts as its own patient"
        )
    else:
        classes = [named[label] for label in range(len(source.class_names))]
        lines += _patient_table(patients, labels, classes)
    if sizes:
        widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
        lines.append(
            f"image size: width {min(widths)}-{max(widths)} px, "
            f"height {min(heights)}-{max(heights)} px "
            f"(median {statistics.median(widths):g} x {statistics.median(heights):g})"
        )
    if source.metadata:
        lines.append(f"metadata: {', '.join(source.metadata)}")
    lines.append(f"skipped: {len(source.skipped)} files")
    # names come from whoever made the data: escaped, so that one cannot forge a line
    lines += [f"  {printable(file)}: {printable(reason)}" for file, reason in source.skipped]
    lines += [f"ignored: {printable(what)}" for what in source.ignored]
    return "\n".join(lines)


def _patient_table(patients: list[str], labels: np.ndarray, classes: list[str]) -> list[str]:
    """One row per patient, in natural order: images in all and per class."""
    by_class: dict[str, Counter[int]] = {p: Counter() for p in patients}
    for patient, label in zip(patients, labels.tolist(), strict=True):
        by_class[patient][label] += 1
    header = ["patient", "images", *classes]
    rows = [header] + [
        [patient, sum(counts.values()), *(counts[label] for label in range(len(classes)))]
        for patient, counts in sorted(by_class.items(), key=lambda item: natural_key(item[0]))
    ]
    return ["  " + "  ".join(f"{v:>11}" if i else f"{v:<8}" for i, v in enumerate(row))
            for row in rows]
