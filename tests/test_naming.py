from __future__ import annotations

from cellae.naming import natural_key


def test_numbers_in_names_sort_as_numbers():
    names = ["C103", "C9", "C33", "c10", "C9b", "C9a", "patient", ""]
    expected = ["", "C9", "C9a", "C9b", "C33", "C103", "c10", "patient"]
    assert sorted(names, key=natural_key) == expected


def test_names_of_any_shape_compare():
    # digits where another name has text, and digits that are not ASCII, never fail to compare
    names = ["10", "a", "a1", "1a", "x²", "٣", "x٣"]
    assert sorted(names, key=natural_key) == ["1a", "٣", "10", "a", "a1", "x٣", "x²"]
