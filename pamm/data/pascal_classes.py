"""PASCAL-Context / Pascal-Part class tables the ATRC loaders use (docs/datasets.md), as constants.

Only ids and names that the loaders and the synthetic generator need live here.
"""
from __future__ import annotations

import numpy as np

#: VOC class names in VOC order (index 0 = background); Pascal-Part's ``class_ind`` uses the same order.
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
PERSON_CLASS_INDEX = 15

#: PASCAL-Context (459-class) id of each VOC class, in VOC order (background first).
VOC_CONTEXT_IDS: tuple[int, ...] = (
    0, 2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427,
)

#: Context ids whose class also exists in NYU (plus tvmonitor): distilled normals are valid only there.
NORMALS_CONTEXT_IDS: tuple[int, ...] = (
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50,
    51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104,
    105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172,
    174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230,
    232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281,
    283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323,
    329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383,
    384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432,
    440, 441, 442, 443, 444, 446, 454, 457,
)
assert len(NORMALS_CONTEXT_IDS) == 170

#: A few non-VOC context ids the synthetic indoor scenes use (names from the 59-class subset).
CONTEXT_WALL, CONTEXT_FLOOR, CONTEXT_CEILING = 440, 158, 68
CONTEXT_CABINET, CONTEXT_DOOR, CONTEXT_WINDOW, CONTEXT_CURTAIN = 46, 115, 454, 105

#: Pascal-Part person part names -> the 6 parsing classes (0 = background).
PERSON_PART_GROUPS: dict[str, int] = {
    **{name: 1 for name in ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "nose", "mouth")},
    **{name: 2 for name in ("torso", "neck")},
    **{name: 3 for name in ("luarm", "ruarm")},
    **{name: 4 for name in ("llarm", "rlarm", "lhand", "rhand")},
    **{name: 5 for name in ("luleg", "ruleg")},
    **{name: 6 for name in ("llleg", "rlleg", "lfoot", "rfoot")},
}
assert len(PERSON_PART_GROUPS) == 24


def context_to_voc_lut() -> np.ndarray:
    """Lookup table (length 460) from a context id to its VOC index; non-VOC ids map to 0."""
    lut = np.zeros(460, dtype=np.uint8)
    for voc_index, context_id in enumerate(VOC_CONTEXT_IDS):
        lut[context_id] = voc_index
    return lut


def normals_valid_lut() -> np.ndarray:
    """Boolean lookup table (length 460): True for context ids where distilled normals are kept."""
    lut = np.zeros(460, dtype=bool)
    lut[list(NORMALS_CONTEXT_IDS)] = True
    return lut
