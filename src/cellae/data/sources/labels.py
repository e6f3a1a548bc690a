"""How sources turn names into labels and patients, the same way for every layout.

The malaria set's two classes always get the same labels, uninfected 0 and infected 1,
whether they come from folders, a CSV or the generator, so that runs on any copy compare.
Other class names are numbered in natural order. A patient is read from the NIH file name
(``C33P1thinF_...`` is patient C33); a file without one is its own patient.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from cellae.errors import CellaeError
from cellae.naming import natural_key

MALARIA_CLASSES = ["uninfected", "infected"]
# the same two classes as people often write them in a CSV
_MALARIA_SPELLINGS = ({"parasitized", "uninfected"}, {"infected", "uninfected"})

# NIH names start with the patient: C33P1thinF_, C176P137NThinF_, C64P25N_ThinF_, C1_thinF_,
# and in the whole set also C51AP12thinF_ and C37BP2_thinF_ (a letter after the number, part
# of the patient: C51A) and C167P128ReThinF_ (a word before ThinF). A letter counts as the
# patient's only before P<number>: in C12NThinF_ the N is a suffix, as in C176P137NThinF_.
_PATIENT = re.compile(r"^c(\d+)(?:([a-z])?p\d+)?[a-z]*_?thin", re.IGNORECASE)
# more files than this share without a patient id, and a patient split is said to be unsound
UNMATCHED_WARNING_SHARE = 0.01


class Classes(NamedTuple):
    label_map: dict[str, int]  # the class as the source names it -> label
    names: list[str]  # class names by label
    malaria: bool  # the malaria set's two classes, labelled by its convention


def classes_from_names(names: Iterable[str]) -> Classes:
    """Labels for the classes a source names (folder names, CSV labels)."""
    unique = sorted(set(names), key=natural_key)
    folded: dict[str, str] = {}
    for name in unique:
        if name.casefold() in folded:
            # two spellings of one class would become two classes, and lose the malaria labels
            raise CellaeError(f"the classes '{folded[name.casefold()]}' and '{name}' differ only "
                              f"in case; merge them into one (or rename one)")
        folded[name.casefold()] = name
    if len(unique) == 2 and {name.lower() for name in unique} in _MALARIA_SPELLINGS:
        label_map = {name: int(name.lower() != "uninfected") for name in unique}
        return Classes(label_map, list(MALARIA_CLASSES), True)
    return Classes({name: i for i, name in enumerate(unique)}, unique, False)


def patient_from_name(name: str) -> str | None:
    """The patient id in an NIH file name (``C33P1thinF_...`` -> ``C33``), or None."""
    match = _PATIENT.match(posixpath.basename(name))
    return f"C{match.group(1)}{(match.group(2) or '').upper()}" if match else None


def unmatched_warning(unmatched: int, total: int) -> str | None:
    """A warning when more than ``UNMATCHED_WARNING_SHARE`` of the files have no patient id:
    each is then its own patient, so one patient's cells can fall on both sides of a split."""
    if total == 0 or unmatched / total <= UNMATCHED_WARNING_SHARE:
        return None
    return (f"WARNING: {unmatched:,} of {total:,} files ({100 * unmatched / total:.1f}%) have no "
            f"patient id in their name (not like C33P1thinF_...); each counts as its own patient, "
            f"so a patient split may put one patient's cells on both sides (give a CSV source "
            f"with a patient column)")


def patients_from_names(
    files: Sequence[str], given: Sequence[str] | None = None
) -> tuple[list[str], int]:
    """The patient of each file, and how many had to fall back to the file itself.

    A non-empty ``given`` patient (a CSV's column) wins, then the id in the file name; a file
    with neither is its own patient, so that a patient split is then a split by image.
    """
    patients, unmatched = [], 0
    for i, file in enumerate(files):
        patient = (given[i] if given is not None else "") or patient_from_name(file)
        if patient is None:
            unmatched += 1
            patient = file
        patients.append(patient)
    return patients, unmatched
