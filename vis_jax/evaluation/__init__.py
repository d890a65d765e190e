"""YouTube-VIS / OVIS evaluation internals; the public API lives in ``vis_jax.evaluate``.

Modules:
  loading     GT / results json -> per-(video, category) tracks, with the official loader's rules.
  video_iou   sum-of-intersections / sum-of-unions video IoU, one pycocotools call per frame.
  accumulate  greedy matching, 101-point precision, the summary numbers.
  submission  results dicts from binary masks, results.json + results.zip for codalab.

Semantics follow /work/shared/spec/ytvis_evaluation.md (youtubevos/cocoapi and the OVIS fork).
"""
