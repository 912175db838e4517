"""The class tables, pinned to the datasets' published values.

Every colour is written out here as a literal: a table compared only with itself (or with a
copy of itself) lets a typo through, and the colours are what a person reads a mask by.
"""
from __future__ import annotations

import pytest

from dfanet_model.classes import CAMVID, CITYSCAPES, CLASS_TABLES

# The 11-class CamVid of SegNet (label value 11 is void), with the colours of the original
# CamVid label_colors.txt (Sidewalk 0 0 192, Column_Pole 192 192 128, ...).
CAMVID_PUBLISHED = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Sidewalk", (0, 0, 192)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)

# Cityscapes' 19 training ids (trainId 0..18) with the colours of cityscapesScripts' labels.
CITYSCAPES_PUBLISHED = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)


@pytest.mark.parametrize("table, published, ignore_index", [
    (CAMVID, CAMVID_PUBLISHED, 11),
    (CITYSCAPES, CITYSCAPES_PUBLISHED, 255),
], ids=["camvid", "cityscapes"])
def test_class_table_holds_the_published_names_and_colours(table, published, ignore_index):
    assert table.num_classes == len(published)
    for class_id, (name, color) in enumerate(published):
        assert table.names[class_id] == name, class_id
        assert tuple(table.colors[class_id]) == color, f"{class_id} {name}"
    assert table.ignore_index == ignore_index
    # No two classes share a colour: a mask must be readable back into ids.
    assert len(set(table.colors)) == len(table.colors)
    assert CLASS_TABLES[table.dataset] is table
