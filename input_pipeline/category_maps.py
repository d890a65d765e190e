"""Category lists of the VIS benchmarks and the official COCO → VIS category maps.

The maps are the ones the official VITA code uses for joint training on COCO pseudo-videos
(``COCO_TO_YTVIS_2019`` / ``COCO_TO_YTVIS_2021`` in ``vita/data/datasets/ytvis.py`` and
``COCO_TO_OVIS`` in ``vita/data/datasets/ovis.py`` of sukjunhwang/VITA @ 59c24ad). They map a
COCO *dataset* category id to a target *dataset* category id; COCO categories that are absent
are not used for training (the official mapper turns them into class -1 and drops them).
Several COCO classes can land on one target class (bicycle and motorcycle → motorbike).

Category lists are ``(id, name)`` pairs as in the released annotation jsons. Contiguous labels
are the position in the id-sorted list, as detectron2's ``thing_dataset_id_to_contiguous_id``.
"""

from __future__ import annotations

from typing import Any

YTVIS_2019_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "giant_panda"), (3, "lizard"), (4, "parrot"), (5, "skateboard"),
    (6, "sedan"), (7, "ape"), (8, "dog"), (9, "snake"), (10, "monkey"),
    (11, "hand"), (12, "rabbit"), (13, "duck"), (14, "cat"), (15, "cow"),
    (16, "fish"), (17, "train"), (18, "horse"), (19, "turtle"), (20, "bear"),
    (21, "motorbike"), (22, "giraffe"), (23, "leopard"), (24, "fox"), (25, "deer"),
    (26, "owl"), (27, "surfboard"), (28, "airplane"), (29, "truck"), (30, "zebra"),
    (31, "tiger"), (32, "elephant"), (33, "snowboard"), (34, "boat"), (35, "shark"),
    (36, "mouse"), (37, "frog"), (38, "eagle"), (39, "earless_seal"), (40, "tennis_racket"),
)

YTVIS_2021_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "airplane"), (2, "bear"), (3, "bird"), (4, "boat"), (5, "car"),
    (6, "cat"), (7, "cow"), (8, "deer"), (9, "dog"), (10, "duck"),
    (11, "earless_seal"), (12, "elephant"), (13, "fish"), (14, "flying_disc"), (15, "fox"),
    (16, "frog"), (17, "giant_panda"), (18, "giraffe"), (19, "horse"), (20, "leopard"),
    (21, "lizard"), (22, "monkey"), (23, "motorbike"), (24, "mouse"), (25, "parrot"),
    (26, "person"), (27, "rabbit"), (28, "shark"), (29, "skateboard"), (30, "snake"),
    (31, "snowboard"), (32, "squirrel"), (33, "surfboard"), (34, "tennis_racket"), (35, "tiger"),
    (36, "train"), (37, "truck"), (38, "turtle"), (39, "whale"), (40, "zebra"),
)

# "Vehical" is the spelling of the released OVIS json and of the official category list.
OVIS_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "Person"), (2, "Bird"), (3, "Cat"), (4, "Dog"), (5, "Horse"),
    (6, "Sheep"), (7, "Cow"), (8, "Elephant"), (9, "Bear"), (10, "Zebra"),
    (11, "Giraffe"), (12, "Poultry"), (13, "Giant_panda"), (14, "Lizard"), (15, "Parrot"),
    (16, "Monkey"), (17, "Rabbit"), (18, "Tiger"), (19, "Fish"), (20, "Turtle"),
    (21, "Bicycle"), (22, "Motorcycle"), (23, "Airplane"), (24, "Boat"), (25, "Vehical"),
)

# COCO dataset id → YouTube-VIS 2019 dataset id (21 COCO ids onto 19 target classes).
COCO_TO_YTVIS_2019: dict[int, int] = {
    1: 1, 2: 21, 3: 6, 4: 21, 5: 28, 7: 17, 8: 29, 9: 34, 17: 14, 18: 8, 19: 18, 21: 15,
    22: 32, 23: 20, 24: 30, 25: 22, 35: 33, 36: 33, 41: 5, 42: 27, 43: 40,
}

# COCO dataset id → YouTube-VIS 2021 dataset id (23 COCO ids onto 21 target classes).
COCO_TO_YTVIS_2021: dict[int, int] = {
    1: 26, 2: 23, 3: 5, 4: 23, 5: 1, 7: 36, 8: 37, 9: 4, 16: 3, 17: 6, 18: 9, 19: 19,
    21: 7, 22: 12, 23: 2, 24: 40, 25: 18, 34: 14, 35: 31, 36: 31, 41: 29, 42: 33, 43: 34,
}

# COCO dataset id → OVIS dataset id (17 COCO ids onto 15 target classes).
COCO_TO_OVIS: dict[int, int] = {
    1: 1, 2: 21, 3: 25, 4: 22, 5: 23, 6: 25, 8: 25, 9: 24, 17: 3, 18: 4, 19: 5, 20: 6,
    21: 7, 22: 8, 23: 9, 24: 10, 25: 11,
}

DATASET_CATEGORIES: dict[str, tuple[tuple[int, str], ...]] = {
    "ytvis19": YTVIS_2019_CATEGORIES,
    "ytvis21": YTVIS_2021_CATEGORIES,
    "ovis": OVIS_CATEGORIES,
}

# name → (source id → target id, target dataset name).
_MAPS: dict[str, tuple[dict[int, int], str]] = {
    "coco_to_ytvis19": (COCO_TO_YTVIS_2019, "ytvis19"),
    "coco_to_ytvis21": (COCO_TO_YTVIS_2021, "ytvis21"),
    "coco_to_ovis": (COCO_TO_OVIS, "ovis"),
}

MAP_NAMES: tuple[str, ...] = tuple(sorted(_MAPS))


def _check_name(name: str) -> tuple[dict[int, int], str]:
  if name not in _MAPS:
    raise ValueError(f"unknown category map {name!r}; known maps: {', '.join(MAP_NAMES)}")
  return _MAPS[name]


def get_category_map(name: str) -> dict[int, int]:
  """The named map from source dataset category ids to target dataset category ids.

  Args:
    name: one of ``MAP_NAMES`` (``coco_to_ytvis19``, ``coco_to_ytvis21``, ``coco_to_ovis``).

  Returns:
    A fresh dict (callers may modify it).

  Raises:
    ValueError: the name is unknown (the message lists the known names).
  """
  return dict(_check_name(name)[0])


def target_dataset(name: str) -> str:
  """The dataset (key of ``DATASET_CATEGORIES``) whose ids the named map produces."""
  return _check_name(name)[1]


def dataset_categories(dataset: str) -> list[dict[str, Any]]:
  """``[{"id", "name"}, ...]`` of a benchmark, sorted by id (= contiguous label order)."""
  if dataset not in DATASET_CATEGORIES:
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASET_CATEGORIES))}")
  return [{"id": i, "name": n} for i, n in sorted(DATASET_CATEGORIES[dataset])]


def target_categories(name: str) -> list[dict[str, Any]]:
  """The id-sorted categories of the named map's target dataset (its contiguous label space)."""
  return dataset_categories(target_dataset(name))
