"""The location / offset / area / colour tables against goldens 60 and 62."""

from __future__ import annotations

from omost_engine.canvas import box
from omost_engine.tables import AREAS, COLORS, LOCATIONS, OFFSETS, TABLES


def test_location_offset_area_tables_match_the_original_in_order(golden) -> None:
    gold = golden("60")
    for table, key in ((LOCATIONS, "locations_xy"), (OFFSETS, "offsets_xy"), (AREAS, "areas_wh")):
        assert list(table) == list(gold[key])
        assert [list(v) for v in table.values()] == list(gold[key].values())


def test_all_729_boxes_match_golden_60(golden) -> None:
    gold = golden("60")
    assert len(gold["rows"]) == 729
    rects = set()
    for row in gold["rows"]:
        rect = box(row["location"], row["offset"], row["area"])
        assert list(rect) == row["rect"], row
        rects.add(rect)
    assert len(rects) == gold["distinct_rect_count"] == 661


def test_every_box_is_non_empty_and_inside_the_grid() -> None:
    for loc in LOCATIONS:
        for off in OFFSETS:
            for area in AREAS:
                top, bottom, left, right = box(loc, off, area)
                assert 0 <= top < bottom <= 90 and 0 <= left < right <= 90
                assert bottom - top >= 25 and right - left >= 25


def test_colour_table_matches_golden_62_in_order(golden) -> None:
    gold = golden("62")
    assert len(COLORS) == gold["count"] == 149
    assert [(name, list(rgb)) for name, rgb in COLORS.items()] == [
        (c["name"], c["rgb"]) for c in gold["colors"]
    ]
    assert COLORS["navyblue"] == (0, 0, 128) and COLORS["rebeccapurple"] == (102, 51, 153)


def test_tables_are_read_only() -> None:
    for table in TABLES.values():
        try:
            table["new"] = (0, 0)  # type: ignore[index]
        except TypeError:
            continue
        raise AssertionError("a table accepted a new key")
