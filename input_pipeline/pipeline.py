"""The grain training pipeline: static-shape batches of augmented clips.

Whole-video evaluation inputs live in ``input_pipeline/eval_source.py``.

Training chain (one per JAX process, all processes build the same *global* stream)::

  per source: MapDataset.source(records) → shuffle(seed_i) → repeat() → tag source index
  → MapDataset.mix(sources, weights=ratios)        # deterministic interleave ∝ ratio
  → random_map(plan)                                # frame indices + augmentation draws (cheap)
  → batch(global_batch, drop_remainder, list)       # a step's global list of plans
  → map(build local batch)                          # decode + augment + pad this process's slice
  → to_iter_dataset(ReadOptions) → [mp_prefetch] → map(pop counters)

Design decisions (and why):

* **Mixing** uses grain's ``MapDataset.mix``: per batch element the source follows a fixed
  interleave with exact proportions ∝ ``ratio`` instead of the official independent draw
  (``DATASET_RATIO``): same expectation, less variance, random access preserved.
* **Sharding**: the global stream is identical on every process; process ``p`` decodes the
  contiguous slice ``[p * B_local, (p + 1) * B_local)`` of each global batch (the layout
  ``jax.make_array_from_process_local_data`` expects). Shards are disjoint and cover the stream;
  the union over processes equals the single-process batch, whatever the process count.
* **Buckets**: a clip's output size depends only on its record's (height, width) and its random
  draws, so every process knows the sizes of the *whole* global batch before decoding and picks
  the same bucket: the smallest-area ``config.input.size_buckets`` entry holding every clip of
  the step. If none holds them all (e.g. landscape and portrait clips with no square bucket),
  the bucket keeping the most pixels is used and the misfits are resized down to fit, keeping
  their aspect ratio (counted as ``shrunk_clips``). A config whose largest clip fits no bucket
  at all is rejected when the pipeline is built.
* **Bad samples** (``DataError`` from reading/decoding): ``"error"`` re-raises (the message names
  the file); ``"skip"`` replaces the element by another record of the same source drawn from the
  element's own seed (deterministic, batches stay full, checkpoints stay exact). A replacement
  is shrunk to fit the step's bucket if needed. Counts travel in the batch as ``num_skipped`` /
  ``num_truncated`` / ``num_shrunk`` and are moved into ``info.counters`` in the consumer (right
  with ``num_workers > 0`` too); they count since the iterator was created (not restored).
* **Presence** (official ``prepare_targets``): an instance is present in a frame iff its visible
  mask is non-empty there after augmentation; instances absent from all T frames are dropped.
  Crowd tracks and labels < 0 are ignored for training. Instance order = the record's track
  order; ``track_ids`` are the raw dataset ids (the model re-bases them per clip).
* **COCO pseudo-videos**: the single image is decoded once and replicated; a fake length uniform
  in ``config.input.pseudo.fake_length`` is drawn per sample (as the official mapper does) and
  used only for ``frame_indices``.

Batch (numpy dict; B = ``config.batch_size // process_count``; H, W = the step's bucket)::

  images          uint8 [B, T, H, W, 3]   zero padded bottom/right
  image_valid     bool  [B, H, W]         True inside the augmented image (shared by all frames:
                                          the crop size is per clip)
  masks           bool  [B, G, T, H, W]
  labels          int32 [B, G]            -1 = padding
  present         bool  [B, G, T]
  instance_valid  bool  [B, G]
  track_ids       int64 [B, G]            -1 = padding
  image_sizes     int32 [B, 2]            augmented (h, w) before padding
  frame_indices   int32 [B, T]
  video_ids       int64 [B]
  source_ids      int32 [B]               index into ``info.source_names`` (sorted active names)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from input_pipeline import frames, sampling, transforms
from input_pipeline.records import Clip, InstanceTrack, VideoRecord

_MAX_CONSECUTIVE_BAD = 20


# ---- one clip --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ClipPlan:
  """Everything random about one training element, drawn before any decoding.

  Attributes:
    record: the video (or COCO image) to read.
    source_index: index of its source in the sorted active-source names.
    frame_indices: int32 ``[T]`` sampled frame indices (into the fake length for pseudo-videos).
    augmentation: the clip's augmentation draws.
    seed: seeds decode-time choices (instance subset, replacement of a bad sample).
  """

  record: VideoRecord
  source_index: int
  frame_indices: np.ndarray
  augmentation: transforms.ClipAugmentation
  seed: int


def plan_clip(record: VideoRecord, rng: np.random.Generator, input_config: Any,
              source_index: int = 0) -> ClipPlan:
  """Samples frames and augmentation for ``record`` (``config.input`` semantics, spec §3.6)."""
  if record.is_pseudo:
    lo, hi = input_config.pseudo.fake_length
    length = int(rng.integers(lo, hi + 1))
  else:
    length = record.length
  indices = sampling.sample_clip_indices(rng, length, input_config.num_frames,
                                         input_config.sampling_frame_range,
                                         input_config.sampling_frame_shuffle)
  aug = transforms.draw_clip_augmentation(rng, record.height, record.width,
                                          input_config.num_frames, input_config,
                                          pseudo=record.is_pseudo)
  return ClipPlan(record, source_index, indices, aug, int(rng.integers(2**63 - 1)))


def _training_tracks(record: VideoRecord) -> list[InstanceTrack]:
  return [t for t in record.tracks if not t.iscrowd and t.label >= 0]


def load_clip(plan: ClipPlan, output_size: tuple[int, int] | None = None) -> Clip:
  """Reads, decodes and augments the planned clip; drops instances absent from every frame.

  Args:
    plan: from ``plan_clip``.
    output_size: overrides the planned output size (used to shrink a replacement sample).

  Returns:
    The clip with ``images`` ``[T, h, w, 3]`` and ``masks`` ``[N, T, h, w]``.

  Raises:
    frames.DataError: a frame or segmentation is missing, truncated or mis-sized.
  """
  record, aug = plan.record, plan.augmentation
  if output_size is not None:
    aug = dataclasses.replace(aug, output_size=tuple(output_size))
  # Pseudo-videos have one real frame; real videos read each distinct sampled frame once.
  sources = [0] * len(plan.frame_indices) if record.is_pseudo else plan.frame_indices.tolist()
  tracks = [t for t in _training_tracks(record)
            if any(t.segmentations[i] is not None for i in set(sources))]
  decoded_frames, decoded_masks = {}, {}
  for i in set(sources):
    decoded_frames[i] = frames.read_frame(record, i)
    decoded_masks[i] = np.zeros((len(tracks), record.height, record.width), bool)
    for n, track in enumerate(tracks):
      if track.segmentations[i] is not None:
        decoded_masks[i][n] = frames.decode_segmentation(track.segmentations[i], record.height,
                                                         record.width)
  images, masks = transforms.augment_clip(aug, [decoded_frames[i] for i in sources],
                                          [decoded_masks[i] for i in sources])
  present = masks.any(axis=(2, 3))
  keep = present.any(axis=1)
  return Clip(
      images=images,
      masks=masks[keep],
      labels=np.array([t.label for t in tracks], np.int32).reshape(-1)[keep],
      present=present[keep],
      track_ids=np.array([t.track_id for t in tracks], np.int64).reshape(-1)[keep],
      frame_indices=plan.frame_indices.astype(np.int32),
      video_id=record.video_id,
      source_index=plan.source_index,
  )


def pad_instances(clip: Clip, max_instances: int,
                  rng: np.random.Generator) -> tuple[dict[str, Any], int]:
  """Pads (or randomly subsamples) the clip's instances to G = ``max_instances``.

  Per-instance vectors are padded to G (labels / track ids -1); ``masks`` keeps only the n <= G
  kept instances (``[n, T, h, w]``): ``collate`` writes them into the zero-initialised batch,
  which saves a G-sized copy per clip.

  Returns:
    (element, number of instances dropped because the clip had more than G).
  """
  n = clip.labels.shape[0]
  dropped = max(0, n - max_instances)
  order = np.arange(n)
  if dropped:
    order = np.sort(rng.choice(n, max_instances, replace=False))
  kept, t = len(order), clip.images.shape[0]
  labels = np.full((max_instances,), -1, np.int32)
  labels[:kept] = clip.labels[order]
  present = np.zeros((max_instances, t), bool)
  present[:kept] = clip.present[order]
  track_ids = np.full((max_instances,), -1, np.int64)
  track_ids[:kept] = clip.track_ids[order]
  masks = clip.masks[order] if dropped else clip.masks
  element = dict(images=clip.images, masks=masks, labels=labels, present=present,
                 instance_valid=labels >= 0, track_ids=track_ids,
                 frame_indices=clip.frame_indices, video_id=clip.video_id,
                 source_id=clip.source_index)
  return element, dropped


def choose_bucket(sizes: Sequence[tuple[int, int]],
                  buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """Smallest-area bucket (first on ties) holding every (h, w) in ``sizes``.

  If no bucket holds them all, the one keeping the most pixels after the misfits are shrunk
  with ``transforms.fit_within`` (then the smaller one).
  """
  need_h = max(s[0] for s in sizes)
  need_w = max(s[1] for s in sizes)
  fits = [b for b in buckets if b[0] >= need_h and b[1] >= need_w]
  if fits:
    return min(fits, key=lambda b: b[0] * b[1])

  def kept_pixels(bucket: tuple[int, int]) -> int:
    return sum(h * w for h, w in (transforms.fit_within(s, bucket) for s in sizes))

  return max(buckets, key=lambda b: (kept_pixels(b), -b[0] * b[1]))


def collate(elements: Sequence[dict[str, Any]], bucket: tuple[int, int]) -> dict[str, np.ndarray]:
  """Stacks padded elements into the static batch layout (see module docstring)."""
  b = len(elements)
  big_h, big_w = bucket
  t = elements[0]["images"].shape[0]
  g = elements[0]["labels"].shape[0]
  images = np.zeros((b, t, big_h, big_w, 3), np.uint8)
  image_valid = np.zeros((b, big_h, big_w), bool)
  masks = np.zeros((b, g, t, big_h, big_w), bool)
  sizes = np.zeros((b, 2), np.int32)
  for i, e in enumerate(elements):
    h, w = e["images"].shape[1:3]
    images[i, :, :h, :w] = e["images"]
    image_valid[i, :h, :w] = True
    masks[i, :len(e["masks"]), :, :h, :w] = e["masks"]
    sizes[i] = h, w
  stack = {k: np.stack([e[k] for e in elements])
           for k in ("labels", "present", "instance_valid", "track_ids", "frame_indices")}
  return dict(images=images, image_valid=image_valid, masks=masks, **stack, image_sizes=sizes,
              video_ids=np.array([e["video_id"] for e in elements], np.int64),
              source_ids=np.array([e["source_id"] for e in elements], np.int32))


# ---- grain pieces (module-level classes so that mp_prefetch can pickle them) -----------------


def _tag_source(record: VideoRecord, source_index: int) -> tuple[int, VideoRecord]:
  return source_index, record


@dataclasses.dataclass(frozen=True)
class _Planner:
  input_config: ml_collections.FrozenConfigDict

  def __call__(self, tagged: tuple[int, VideoRecord], rng: np.random.Generator) -> ClipPlan:
    source_index, record = tagged
    return plan_clip(record, rng, self.input_config, source_index)


@dataclasses.dataclass(frozen=True, eq=False)
class _LocalBatchBuilder:
  """Global list of plans → this process's padded batch (+ per-element counters)."""

  input_config: ml_collections.FrozenConfigDict
  records: tuple[Sequence[VideoRecord], ...]     # per source, for replacing bad samples
  buckets: tuple[tuple[int, int], ...]
  skip_bad: bool
  start: int
  size: int

  def _load(self, plan: ClipPlan, bucket: tuple[int, int],
            rng: np.random.Generator) -> tuple[Clip, int, bool]:
    skipped = 0
    while True:
      size = transforms.fit_within(plan.augmentation.output_size, bucket)
      try:
        return load_clip(plan, size), skipped, size != plan.augmentation.output_size
      except frames.DataError as e:
        if not self.skip_bad:
          raise
        skipped += 1
        if skipped >= _MAX_CONSECUTIVE_BAD:
          raise RuntimeError(f"{skipped} bad samples in a row from source {plan.source_index}; "
                             f"last: {e}") from e
        pool = self.records[plan.source_index]
        record = pool[int(rng.integers(len(pool)))]
        plan = plan_clip(record, rng, self.input_config, plan.source_index)

  def __call__(self, plans: Sequence[ClipPlan]) -> dict[str, np.ndarray]:
    bucket = choose_bucket([p.augmentation.output_size for p in plans], self.buckets)
    elements, stats = [], []
    for plan in plans[self.start:self.start + self.size]:
      rng = np.random.default_rng(plan.seed)
      clip, num_skipped, was_shrunk = self._load(plan, bucket, rng)
      element, num_dropped = pad_instances(clip, self.input_config.max_instances, rng)
      elements.append(element)
      stats.append((num_skipped, num_dropped, was_shrunk))
    batch = collate(elements, bucket)
    columns = np.array(stats, np.int32).reshape(-1, 3).T
    batch.update(num_skipped=columns[0], num_truncated=columns[1], num_shrunk=columns[2])
    return batch


@dataclasses.dataclass
class PipelineCounters:
  """Cumulative data-quality counters of one training iterator (consumer side).

  Attributes:
    batches: batches handed to the trainer.
    skipped: per source, bad samples replaced (``on_bad_sample="skip"``).
    truncated_instances: instances dropped because a clip had more than G.
    truncated_clips: clips that had more than G instances.
    shrunk_clips: clips resized down to fit their batch's bucket.
  """

  batches: int = 0
  skipped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  truncated_instances: int = 0
  truncated_clips: int = 0
  shrunk_clips: int = 0


@dataclasses.dataclass
class _PopCounters:
  counters: PipelineCounters

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    skipped = batch.pop("num_skipped")
    truncated = batch.pop("num_truncated")
    c = self.counters
    c.batches += 1
    np.add.at(c.skipped, batch["source_ids"], skipped)
    c.truncated_instances += int(truncated.sum())
    c.truncated_clips += int((truncated > 0).sum())
    c.shrunk_clips += int(batch.pop("num_shrunk").sum())
    return batch


@dataclasses.dataclass
class PipelineInfo:
  """What the trainer needs to know about the training iterator.

  Attributes:
    source_names: sorted active source names; ``batch["source_ids"]`` indexes this.
    source_sizes: records per source.
    label_to_category_id: per source, the reader's contiguous-label → dataset-id map.
    global_batch_size, local_batch_size, process_index, process_count: the sharding.
    num_frames: T.  max_instances: G.
    buckets: padded (H, W) shapes a batch can have (≤ len(buckets) compilations).
    counters: data-quality counts, updated as batches are consumed.
  """

  source_names: tuple[str, ...]
  source_sizes: dict[str, int]
  label_to_category_id: dict[str, Any]
  global_batch_size: int
  local_batch_size: int
  process_index: int
  process_count: int
  num_frames: int
  max_instances: int
  buckets: tuple[tuple[int, int], ...]
  counters: PipelineCounters

  def batch_spec(self, bucket: tuple[int, int],
                 global_batch: bool = True) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of every batch key for one bucket, for ``jax.eval_shape`` / sharding."""
    b = self.global_batch_size if global_batch else self.local_batch_size
    t, g, (h, w) = self.num_frames, self.max_instances, bucket
    spec = dict(images=((b, t, h, w, 3), np.uint8), image_valid=((b, h, w), np.bool_),
                masks=((b, g, t, h, w), np.bool_), labels=((b, g), np.int32),
                present=((b, g, t), np.bool_), instance_valid=((b, g), np.bool_),
                track_ids=((b, g), np.int64), image_sizes=((b, 2), np.int32),
                frame_indices=((b, t), np.int32), video_ids=((b,), np.int64),
                source_ids=((b,), np.int32))
    return {k: (shape, np.dtype(dtype)) for k, (shape, dtype) in spec.items()}


def bad_sample_counts(info: PipelineInfo) -> dict[str, Any]:
  """JSON-ready counters: bad samples skipped (total, per source), truncated and shrunk clips."""
  c = info.counters
  per_source = dict(zip(info.source_names, c.skipped.tolist(), strict=True))
  return dict(skipped=int(c.skipped.sum()), skipped_per_source=per_source, batches=c.batches,
              truncated_instances=c.truncated_instances, truncated_clips=c.truncated_clips,
              shrunk_clips=c.shrunk_clips)


# ---- building the training iterator ----------------------------------------------------------


def _derive_seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def resolve_buckets(input_config: Any, pseudo: bool = True) -> tuple[tuple[int, int], ...]:
  """The padded sizes, checked to hold the largest clip the size settings can produce.

  A landscape clip is at most ``min(max(min_sizes), max_size)`` high and ``max_size`` wide
  (detectron2 resize rule); portrait clips mirror that. Empty ``size_buckets`` means one square
  bucket of the largest ``max_size_train`` rounded up to ``size_divisibility``. ``pseudo``: also
  check the ``input.pseudo`` sizes (a source may yield COCO pseudo-videos).
  """
  limits = [(input_config.max_size_train, input_config.min_size_train)]
  if pseudo:
    limits.append((input_config.pseudo.max_size_train, input_config.pseudo.min_size_train))
  div = input_config.size_divisibility
  buckets = tuple((int(h), int(w)) for h, w in input_config.size_buckets)
  if not buckets:
    side = int(math.ceil(max(m for m, _ in limits) / div) * div)
    buckets = ((side, side),)
  for max_size, min_sizes in limits:
    short = min(max(min_sizes), max_size)
    for need in ((short, max_size), (max_size, short)):
      if not any(b[0] >= need[0] and b[1] >= need[1] for b in buckets):
        raise ValueError(
            f"invalid config value config.input.size_buckets: {list(buckets)} cannot hold a "
            f"{need[0]}x{need[1]} clip (min_size_train up to {max(min_sizes)}, max_size_train "
            f"{max_size}); add a bucket of at least that size")
  return buckets


def make_train_iterator(config: ml_collections.ConfigDict,
                        sources: dict[str, Any] | None = None,
                        process_index: int | None = None,
                        process_count: int | None = None) -> tuple[Any, PipelineInfo]:
  """Builds this process's checkpointable training iterator.

  Args:
    config: the full config (``config.input``, ``config.data``, ``config.batch_size``,
      ``config.seed``).
    sources: name → ``LoadedDataset`` (anything with ``.records``); built from the config's
      active sources with ``input_pipeline.datasets.build_source`` when ``None``.
    process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.

  Returns:
    (iterator, info): ``next(iterator)`` is a batch dict (module docstring);
    ``iterator.get_state()`` / ``set_state()`` checkpoint it (``grain.checkpoint``).
  """
  from configs import common  # local: configs import input_pipeline for the synthetic preset

  if process_index is None or process_count is None:
    import jax  # local: grain worker processes unpickle this module and need no jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{process_count} JAX processes")
  if config.data.on_bad_sample not in ("error", "skip"):
    raise ValueError(f"config.data.on_bad_sample={config.data.on_bad_sample!r} is not "
                     "'error' or 'skip'")
  active = common.active_sources(config)
  if not active:
    raise ValueError("config.data.sources has no source with ratio > 0")
  if sources is None:
    from input_pipeline import datasets

    sources = {name: datasets.build_source(name, src, config) for name, src in active.items()}
  names = tuple(sorted(active))
  missing = [n for n in names if n not in sources]
  if missing:
    raise ValueError(f"no loaded dataset given for active source(s) {missing}")
  # Kept as given: ArrayRecord sources are lazy sequences that must not be copied.
  records = tuple(sources[n].records for n in names)
  for name, recs in zip(names, records, strict=True):
    if not recs:
      raise ValueError(f"source {name!r} has no training records")

  input_config = ml_collections.FrozenConfigDict(config.input)
  # Only COCO (and possibly converted ArrayRecord) sources produce pseudo-videos.
  buckets = resolve_buckets(config.input, pseudo=any(active[n].kind in ("coco", "array_record")
                                                     for n in names))
  local_batch = config.batch_size // process_count

  parts = []
  for i, recs in enumerate(records):
    ds = grain.MapDataset.source(recs)
    if config.data.shuffle:
      ds = ds.shuffle(seed=_derive_seed(config.seed, 1, i))
    parts.append(ds.repeat().map(functools.partial(_tag_source, source_index=i)))
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(
      parts, weights=[float(active[n].ratio) for n in names])
  ds = ds.random_map(_Planner(input_config), seed=_derive_seed(config.seed, 2))
  ds = ds.batch(config.batch_size, drop_remainder=True, batch_fn=list)
  ds = ds.map(_LocalBatchBuilder(
      input_config=input_config, records=records, buckets=buckets,
      skip_bad=config.data.on_bad_sample == "skip",
      start=process_index * local_batch, size=local_batch))
  workers = int(config.data.num_workers)
  buffer = max(1, int(config.data.prefetch))
  # Elements here are whole batches: a small buffer bounds memory (see module docstring).
  ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if workers else buffer,
                                             prefetch_buffer_size=buffer))
  if workers > 0:
    from absl import flags  # grain's worker start reads its absl flags

    if not flags.FLAGS.is_parsed():  # outside absl.app (tests, scripts): use flag defaults
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                       per_worker_buffer_size=buffer))
  counters = PipelineCounters(skipped=np.zeros(len(names), np.int64))
  ids = ids.map(_PopCounters(counters))
  info = PipelineInfo(
      source_names=names,
      source_sizes={n: len(r) for n, r in zip(names, records, strict=True)},
      label_to_category_id={n: getattr(sources[n], "label_to_category_id", None) for n in names},
      global_batch_size=config.batch_size, local_batch_size=local_batch,
      process_index=process_index, process_count=process_count,
      num_frames=config.input.num_frames, max_instances=config.input.max_instances,
      buckets=buckets, counters=counters)
  return iter(ids), info
