"""COCO-Stuff's 182 fine labels and the 27 coarse classes of STEGO-style evaluation.

COCO-Stuff's label PNGs (``stuffthingmaps_trainval2017.zip``) store a fine label as its id minus
one (0 = person ... 181 = wood) and 255 for unlabelled pixels. The 27 coarse classes are COCO-Stuff's
supercategories: 12 for things, 15 for stuff, in the order STEGO (Hamilton et al., ICLR 2022) gives
them, which every paper reporting "COCO-Stuff-27" follows. Labels and supercategories are those of
the COCO-Stuff label list (``labels.md`` of the COCO-Stuff repository) and the ``supercategory`` fields
of the COCO and COCO-Stuff annotation files, including the 11 thing ids COCO never annotated.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# (name, supercategory) for PNG values 0..181, i.e. COCO-Stuff ids 1..182.
COCOSTUFF_LABELS: tuple[tuple[str, str], ...] = (
    ("person", "person"),
    ("bicycle", "vehicle"), ("car", "vehicle"), ("motorcycle", "vehicle"), ("airplane", "vehicle"),
    ("bus", "vehicle"), ("train", "vehicle"), ("truck", "vehicle"), ("boat", "vehicle"),
    ("traffic light", "outdoor"), ("fire hydrant", "outdoor"), ("street sign", "outdoor"),
    ("stop sign", "outdoor"), ("parking meter", "outdoor"), ("bench", "outdoor"),
    ("bird", "animal"), ("cat", "animal"), ("dog", "animal"), ("horse", "animal"), ("sheep", "animal"),
    ("cow", "animal"), ("elephant", "animal"), ("bear", "animal"), ("zebra", "animal"), ("giraffe", "animal"),
    ("hat", "accessory"), ("backpack", "accessory"), ("umbrella", "accessory"), ("shoe", "accessory"),
    ("eye glasses", "accessory"), ("handbag", "accessory"), ("tie", "accessory"), ("suitcase", "accessory"),
    ("frisbee", "sports"), ("skis", "sports"), ("snowboard", "sports"), ("sports ball", "sports"),
    ("kite", "sports"), ("baseball bat", "sports"), ("baseball glove", "sports"), ("skateboard", "sports"),
    ("surfboard", "sports"), ("tennis racket", "sports"),
    ("bottle", "kitchen"), ("plate", "kitchen"), ("wine glass", "kitchen"), ("cup", "kitchen"),
    ("fork", "kitchen"), ("knife", "kitchen"), ("spoon", "kitchen"), ("bowl", "kitchen"),
    ("banana", "food"), ("apple", "food"), ("sandwich", "food"), ("orange", "food"), ("broccoli", "food"),
    ("carrot", "food"), ("hot dog", "food"), ("pizza", "food"), ("donut", "food"), ("cake", "food"),
    ("chair", "furniture"), ("couch", "furniture"), ("potted plant", "furniture"), ("bed", "furniture"),
    ("mirror", "furniture"), ("dining table", "furniture"), ("window", "furniture"), ("desk", "furniture"),
    ("toilet", "furniture"), ("door", "furniture"),
    ("tv", "electronic"), ("laptop", "electronic"), ("mouse", "electronic"), ("remote", "electronic"),
    ("keyboard", "electronic"), ("cell phone", "electronic"),
    ("microwave", "appliance"), ("oven", "appliance"), ("toaster", "appliance"), ("sink", "appliance"),
    ("refrigerator", "appliance"), ("blender", "appliance"),
    ("book", "indoor"), ("clock", "indoor"), ("vase", "indoor"), ("scissors", "indoor"),
    ("teddy bear", "indoor"), ("hair drier", "indoor"), ("toothbrush", "indoor"), ("hair brush", "indoor"),
    ("banner", "textile"), ("blanket", "textile"), ("branch", "plant"), ("bridge", "building"),
    ("building-other", "building"), ("bush", "plant"), ("cabinet", "furniture-stuff"), ("cage", "structural"),
    ("cardboard", "raw-material"), ("carpet", "floor"), ("ceiling-other", "ceiling"), ("ceiling-tile", "ceiling"),
    ("cloth", "textile"), ("clothes", "textile"), ("clouds", "sky"), ("counter", "furniture-stuff"),
    ("cupboard", "furniture-stuff"), ("curtain", "textile"), ("desk-stuff", "furniture-stuff"), ("dirt", "ground"),
    ("door-stuff", "furniture-stuff"), ("fence", "structural"), ("floor-marble", "floor"), ("floor-other", "floor"),
    ("floor-stone", "floor"), ("floor-tile", "floor"), ("floor-wood", "floor"), ("flower", "plant"),
    ("fog", "water"), ("food-other", "food-stuff"), ("fruit", "food-stuff"), ("furniture-other", "furniture-stuff"),
    ("grass", "plant"), ("gravel", "ground"), ("ground-other", "ground"), ("hill", "solid"),
    ("house", "building"), ("leaves", "plant"), ("light", "furniture-stuff"), ("mat", "textile"),
    ("metal", "raw-material"), ("mirror-stuff", "furniture-stuff"), ("moss", "plant"), ("mountain", "solid"),
    ("mud", "ground"), ("napkin", "textile"), ("net", "structural"), ("paper", "raw-material"),
    ("pavement", "ground"), ("pillow", "textile"), ("plant-other", "plant"), ("plastic", "raw-material"),
    ("platform", "ground"), ("playingfield", "ground"), ("railing", "structural"), ("railroad", "ground"),
    ("river", "water"), ("road", "ground"), ("rock", "solid"), ("roof", "building"),
    ("rug", "textile"), ("salad", "food-stuff"), ("sand", "ground"), ("sea", "water"),
    ("shelf", "furniture-stuff"), ("sky-other", "sky"), ("skyscraper", "building"), ("snow", "ground"),
    ("solid-other", "solid"), ("stairs", "furniture-stuff"), ("stone", "solid"), ("straw", "plant"),
    ("structural-other", "structural"), ("table", "furniture-stuff"), ("tent", "building"), ("textile-other", "textile"),
    ("towel", "textile"), ("tree", "plant"), ("vegetable", "food-stuff"), ("wall-brick", "wall"),
    ("wall-concrete", "wall"), ("wall-other", "wall"), ("wall-panel", "wall"), ("wall-stone", "wall"),
    ("wall-tile", "wall"), ("wall-wood", "wall"), ("water-other", "water"), ("waterdrops", "water"),
    ("window-blind", "window"), ("window-other", "window"), ("wood", "solid"),
)

# The 27 coarse classes, named by supercategory (STEGO prints "food" and "furniture" twice: the
# thing and the stuff supercategory); their order is STEGO's class order.
COCOSTUFF27_CLASSES: tuple[str, ...] = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
)


def fine_to_coarse_table(labels=COCOSTUFF_LABELS, classes=COCOSTUFF27_CLASSES) -> np.ndarray:
    """A 256-entry lookup table: fine PNG value -> coarse class id; everything else -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for value, (_, supercategory) in enumerate(labels):
        table[value] = classes.index(supercategory)
    return table


COCOSTUFF27_TABLE = fine_to_coarse_table()

# Ground-truth mappings by the name `make-shards --gt-mapping` accepts: (lookup table, class names).
GT_MAPPINGS: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {
    "cocostuff27": (COCOSTUFF27_TABLE, COCOSTUFF27_CLASSES),
}
