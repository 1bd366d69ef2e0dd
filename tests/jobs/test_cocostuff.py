"""The built-in COCO-Stuff fine-to-coarse table against the published lists."""

import numpy as np

from jobs.tools.cocostuff import COCOSTUFF27_CLASSES, COCOSTUFF27_TABLE, COCOSTUFF_LABELS, GT_MAPPINGS

# STEGO's `fine_to_coarse` (mhamilton723/STEGO, src/data.py, class Coco), as published.
STEGO_FINE_TO_COARSE = {
    0: 9, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 11, 8: 11, 9: 8, 10: 8, 11: 8, 12: 8,
    13: 8, 14: 8, 15: 7, 16: 7, 17: 7, 18: 7, 19: 7, 20: 7, 21: 7, 22: 7, 23: 7, 24: 7,
    25: 6, 26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 10, 34: 10, 35: 10, 36: 10,
    37: 10, 38: 10, 39: 10, 40: 10, 41: 10, 42: 10, 43: 5, 44: 5, 45: 5, 46: 5, 47: 5, 48: 5,
    49: 5, 50: 5, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2, 58: 2, 59: 2, 60: 2,
    61: 3, 62: 3, 63: 3, 64: 3, 65: 3, 66: 3, 67: 3, 68: 3, 69: 3, 70: 3, 71: 0, 72: 0,
    73: 0, 74: 0, 75: 0, 76: 0, 77: 1, 78: 1, 79: 1, 80: 1, 81: 1, 82: 1, 83: 4, 84: 4,
    85: 4, 86: 4, 87: 4, 88: 4, 89: 4, 90: 4, 91: 17, 92: 17, 93: 22, 94: 20, 95: 20, 96: 22,
    97: 15, 98: 25, 99: 16, 100: 13, 101: 12, 102: 12, 103: 17, 104: 17, 105: 23, 106: 15,
    107: 15, 108: 17, 109: 15, 110: 21, 111: 15, 112: 25, 113: 13, 114: 13, 115: 13, 116: 13,
    117: 13, 118: 22, 119: 26, 120: 14, 121: 14, 122: 15, 123: 22, 124: 21, 125: 21, 126: 24,
    127: 20, 128: 22, 129: 15, 130: 17, 131: 16, 132: 15, 133: 22, 134: 24, 135: 21, 136: 17,
    137: 25, 138: 16, 139: 21, 140: 17, 141: 22, 142: 16, 143: 21, 144: 21, 145: 25, 146: 21,
    147: 26, 148: 21, 149: 24, 150: 20, 151: 17, 152: 14, 153: 21, 154: 26, 155: 15, 156: 23,
    157: 20, 158: 21, 159: 24, 160: 15, 161: 24, 162: 22, 163: 25, 164: 15, 165: 20, 166: 17,
    167: 17, 168: 22, 169: 14, 170: 18, 171: 18, 172: 18, 173: 18, 174: 18, 175: 18, 176: 18,
    177: 26, 178: 26, 179: 19, 180: 19, 181: 24,
}
# STEGO's class names for "cocostuff27" (src/utils.py, get_class_labels); "food" and "furniture"
# appear twice there, as the thing and the stuff supercategory.
STEGO_CLASS_NAMES = [
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle", "ceiling", "floor", "food", "furniture", "rawmaterial", "textile", "wall",
    "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
]


def test_table_equals_stego_for_every_fine_label():
    assert {fine: int(COCOSTUFF27_TABLE[fine]) for fine in range(182)} == STEGO_FINE_TO_COARSE


def test_unlabelled_and_unused_values_are_ignored():
    assert COCOSTUFF27_TABLE[255] == 255
    assert (COCOSTUFF27_TABLE[182:] == 255).all()


def test_class_names_follow_stego_order():
    normalised = [name.removesuffix("-stuff").replace("-", "") for name in COCOSTUFF27_CLASSES]
    assert normalised == STEGO_CLASS_NAMES
    assert len(set(COCOSTUFF27_CLASSES)) == 27


def test_fine_labels_match_the_cocostuff_label_list():
    # labels.md of the COCO-Stuff repository: id 1 person ... 91 hair brush (things), 92 banner ... 182 wood.
    names = [name for name, _ in COCOSTUFF_LABELS]
    assert len(names) == 182
    assert (names[0], names[11], names[90], names[91], names[181]) == ("person", "street sign", "hair brush", "banner", "wood")
    assert names.index("sky-other") + 1 == 157 and names.index("wall-brick") + 1 == 171


def test_mapping_is_registered_for_make_shards():
    table, classes = GT_MAPPINGS["cocostuff27"]
    fine = np.array([[0, 156, 255]], dtype=np.uint8)  # person, sky-other, unlabelled
    assert [classes[c] for c in table[fine][0, :2]] == ["person", "sky"]
    assert table[fine][0, 2] == 255
