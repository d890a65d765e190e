"""Shared config defaults, dataset presets, argument parsing and validation.

Every ``configs/<model>_<backbone>_<dataset>.py`` builds on ``base_config()`` here, so a default
changes in exactly one place. ``get_config(arg)`` takes a variant string such as ``smoke`` or
``smoke,frames=3`` (``configs/foo.py:smoke``), parsed by ``parse_arg``.

``FieldReference``s are created inside the functions, never at module level (a module-level
reference leaks between ``get_config()`` calls).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict

# Source kinds understood by input_pipeline.datasets.
SOURCE_KINDS = ("ytvis", "ovis", "coco", "synthetic", "array_record")


def default_cache_dir() -> str:
  """Where generated data lives unless ``VIS_JAX_CACHE`` says otherwise."""
  return os.environ.get("VIS_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vis_jax"))


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses ``"smoke,frames=3"`` into a ConfigDict over ``defaults``.

  A bare word sets a boolean default to True; ``key=value`` is cast to the default's type.
  Unknown words raise, naming the word and the known ones.
  """
  parsed = ConfigDict(dict(defaults))
  if not arg:
    return parsed
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; known: {sorted(defaults)}")
    default = defaults[key]
    if not _:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      parsed[key] = True
    elif isinstance(default, bool):
      parsed[key] = value.lower() in ("1", "true", "yes", "y")
    else:
      parsed[key] = type(default)(value)
  return parsed


def source(kind: str, json: str = "", frames: str = "", ratio: float = 1.0,
           category_map: str = "") -> ConfigDict:
  """One training data source.

  Args:
    kind: one of SOURCE_KINDS.
    json: annotation json (YouTube-VIS / OVIS / COCO instances), or for ``array_record`` the
      path pattern of the converted shards.
    frames: frame folder (``<frames>/<file_name>`` is a frame), or COCO image folder.
    ratio: mixing weight; each batch element picks its source with probability ∝ ratio.
      0 disables the source (e.g. `--config.data.sources.coco.ratio=0` trains without COCO).
    category_map: name of a built-in category map (``input_pipeline.category_maps``), e.g.
      ``coco_to_ytvis19``; empty means the json's categories in sorted-id order.
  """
  return ConfigDict(dict(kind=kind, json=json, frames=frames, ratio=ratio,
                         category_map=category_map))


def synthetic_source_paths(split: str) -> tuple[str, str]:
  """(json, frames) placeholders resolved against ``config.data.synthetic`` at run time."""
  return f"{{synthetic}}/{split}.json", f"{{synthetic}}/{split}/JPEGImages"


def base_config() -> ConfigDict:
  """The defaults shared by every model/dataset config (official VITA YTVIS-2019 recipe)."""
  c = ConfigDict()
  c.seed = 0
  c.model_name = "vita"
  c.model = ConfigDict()        # model-specific keys, filled by each model's config
  c.dtype = "float32"           # compute dtype ("bfloat16" on accelerators); params stay fp32

  # ---- data -------------------------------------------------------------------------------
  c.data = ConfigDict()
  c.data.num_classes = 40
  # name -> source(); dict keys make `--config.data.sources.coco.ratio=0.5` possible.
  c.data.sources = ConfigDict()
  c.data.eval = source("ytvis")
  # Synthetic YouTube-VIS-format data, generated on first use under `root`.
  c.data.synthetic = ConfigDict(dict(
      root=os.path.join(default_cache_dir(), "synthetic"),
      num_train_videos=1000,       # 200 overfit the synthetic detector (issue #5 notes)
      num_valid_videos=30,
      seed=0,
      min_frames=8,
      max_frames=60,
      short_side=240,
      occlusion_labels=False,
      # Main colour hue in a band of the class (False: only the shape tells the class).
      class_colours=True,
      # Radii at frame 0 as fractions of the short side (input_pipeline/synthetic_scene.py).
      object_radius=(0.08, 0.2),
  ))
  # 'error': stop with a message naming the file; 'skip': drop the sample, count and report.
  # Local validation: hold out `num_videos` videos of training source `source` (seeded) and
  # evaluate on them instead of config.data.eval (whose GT is private for YTVIS/OVIS).
  c.data.local_val = ConfigDict(dict(source="", num_videos=0, seed=0))
  c.data.on_bad_sample = "error"
  c.data.num_workers = 0          # grain multiprocessing workers (0 = in-process)
  c.data.prefetch = 2             # batches buffered ahead of the device
  c.data.shuffle = True

  # ---- clip sampling and augmentation (spec §3.6) -------------------------------------------
  c.input = ConfigDict()
  c.input.num_frames = 5                      # T
  c.input.sampling_frame_range = 20           # R
  c.input.sampling_frame_shuffle = False
  c.input.min_size_train = tuple(range(288, 513, 32))
  c.input.max_size_train = 768
  c.input.crop = ConfigDict(dict(
      enabled=True, prob=0.5,
      resize_min_sizes=(400, 500, 600), resize_max_size=1333,
      min_size=384, max_size=600,
      moving=True,
  ))
  c.input.flip_prob = 0.5
  c.input.max_instances = 25                  # G
  # Padded (H, W) image sizes; a clip goes to the smallest bucket that holds it. Every bucket
  # is a multiple of size_divisibility. Empty means one bucket of (max_size_train, max_size_train).
  c.input.size_buckets = ((512, 768), (768, 512), (768, 768))
  c.input.size_divisibility = 32
  c.input.min_size_test = 360
  c.input.max_size_test = 1333
  # True: every test video is padded to one square (max_size_test rounded up to
  # size_divisibility), so evaluation compiles the detector once instead of once per aspect.
  c.input.test_pad_square = False
  c.input.pseudo = ConfigDict(dict(
      rotation_degrees=15.0,
      rotation_center=(0.4, 0.6),
      fake_length=(16, 48),
      min_size_train=tuple(range(288, 513, 32)),
      max_size_train=768,
  ))

  # ---- criterion and matcher (official Mask2Former values; vis_jax/losses/) ------------------
  c.loss = ConfigDict(dict(
      eos_coef=0.1,                 # weight of the no-object class in CE
      class_weight=2.0,             # CE loss / class cost
      mask_weight=5.0,              # point BCE loss / cost
      dice_weight=5.0,              # dice loss / cost
      num_points=12544,             # points for matching (uniform) and losses (importance)
      oversample_ratio=3.0,
      importance_sample_ratio=0.75,
      matcher="scipy",              # scipy (host, exact) | hungarian (pure JAX, exact) | greedy
      deep_supervision=True,
      mask_loss_per_frame=True,     # False: VITA's one BCE/dice per instance over T*P points
      semantic_weight=0.0,          # dense per-pixel class loss (image model; not official)
      embedding_weight=0.0,         # instance-discriminative pixel embedding loss (same)
      centre_offset_weight=0.0,     # centre votes of model.decoder.peak_prior_votes (same)
      mask_piloting_weight=1.0,     # mask-piloted queries (model.decoder.mask_piloting; same)
  ))

  # ---- optimizer (official detectron2 groups; vis_jax/optim.py) -----------------------------
  c.optim = ConfigDict(dict(
      learning_rate=5e-5,
      weight_decay=0.05,
      b1=0.9, b2=0.999, eps=1e-8,
      backbone_multiplier=0.1,
      backbone_pattern=r"(^|/)backbone(/|$)",
      # Norm layers, embeddings and Swin position tables are not decayed (official groups).
      no_decay_patterns=(
          r"(^|/)[^/]*([Nn]orm|bn|ln)[^/]*/(scale|bias)$",
          r"(^|/)[^/]*(embed|Embed)[^/]*/embedding$",
          r"relative_position_bias_table",
          r"absolute_pos_embed",
      ),
      no_decay_bias=False,        # the official code decays biases; True = common variant
      frozen_patterns=(),         # regexes over 'a/b/kernel' paths: no update, no state
      clip_grad_norm=0.01,        # full-model L2 clipping; 0 disables
      schedule="multistep",       # multistep | cosine | constant
      decay_steps=(75_000,),
      decay_factor=0.1,
      cosine_alpha=0.0,
      warmup_steps=10,
      warmup_factor=1.0,
  ))

  # ---- devices (vis_jax/parallel.py) ---------------------------------------------------------
  c.sharding = ConfigDict(dict(
      mesh=(("data", -1), ("fsdp", 1), ("model", 1)),
      batch_axes=("data", "fsdp"),
      # (regex over parameter paths, 'replicate' | 'fsdp'); first match wins.
      param_rules=((".*", "replicate"),),
      logical_axis_rules=(("batch", ("data", "fsdp")),),
  ))
  c.distributed = ConfigDict(dict(init="auto", cpu_collectives="gloo"))

  # ---- training loop -----------------------------------------------------------------------
  c.batch_size = 8             # global clips per step (official: 8 GPUs x 1 clip)
  c.num_train_steps = 140_000
  c.log_every_steps = 20
  c.eval_every_steps = 0        # --mode=train_and_eval: also evaluate every N steps (0: at end)
  c.grad_accum_steps = 1        # micro-batches per step (batch_size must divide evenly)
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.max_nonfinite_steps = 20    # stop once more steps than this had a non-finite loss/grad
  # Start from converted / exported parameters (python -m vis_jax.convert | vis_jax.export):
  # tensors whose path and shape match are loaded, the rest keep their initial values and are
  # reported. Ignored when the workdir already has a checkpoint (resume wins).
  c.init_from = ""
  c.init_from_prefix = ""       # model path the loaded tree goes under ("detector": VITA from M2F)
  c.init_from_strict = False    # True: any missing / unexpected / mismatched tensor is an error
  return c


def apply_smoke(c: ConfigDict) -> ConfigDict:
  """Shrinks a config to seconds-per-step on a CPU: tiny clips, batch and step count."""
  c.batch_size = 2
  c.num_train_steps = 10
  c.log_every_steps = 1
  c.input.num_frames = 2
  c.input.min_size_train = (64,)
  c.input.max_size_train = 128
  c.input.crop.enabled = False
  c.input.size_buckets = ((64, 128), (128, 64), (128, 128))
  c.input.max_instances = 8
  c.input.min_size_test = 64
  c.input.max_size_test = 128
  c.data.synthetic.num_train_videos = 8
  c.data.synthetic.num_valid_videos = 2
  c.data.synthetic.max_frames = 16
  c.data.synthetic.short_side = 96
  # Its own directory: a smoke run must not replace the full dataset of the default root.
  if c.data.synthetic.root == os.path.join(default_cache_dir(), "synthetic"):
    c.data.synthetic.root = os.path.join(default_cache_dir(), "synthetic_smoke")
  return c


def active_sources(config: ConfigDict) -> dict[str, ConfigDict]:
  """Training sources with a positive mixing ratio, by name (sorted)."""
  return {n: s for n, s in sorted(config.data.sources.items()) if s.ratio > 0}


def resolve_paths(config: ConfigDict) -> dict[str, dict[str, str]]:
  """Source paths with ``{synthetic}`` replaced by ``config.data.synthetic.root``."""
  root = os.path.expanduser(config.data.synthetic.root)
  out = {}
  named = dict(config.data.sources.items())
  named["__eval__"] = config.data.eval
  for name, src in named.items():
    out[name] = {k: str(src[k]).replace("{synthetic}", root) for k in ("json", "frames")}
  return out


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _fail(path: str, message: str) -> None:
  raise ConfigError(f"invalid config value config.{path}: {message}")


def validate(config: ConfigDict) -> ConfigDict:
  """Checks values that the locked ConfigDict cannot (types and names are checked by it).

  Raises:
    ValueError naming the offending key.
  """
  sources: Mapping[str, ConfigDict] = config.data.sources
  if not any(src.ratio > 0 for src in sources.values()):
    _fail("data.sources", "at least one training source with ratio > 0 is needed")
  for name, src in sources.items():
    if src.kind not in SOURCE_KINDS:
      _fail(f"data.sources.{name}.kind", f"{src.kind!r} is not one of {SOURCE_KINDS}")
    if src.ratio < 0:
      _fail(f"data.sources.{name}.ratio", f"must be >= 0, got {src.ratio}")
    if src.kind != "synthetic" and not src.json:
      _fail(f"data.sources.{name}.json", "an annotation path is needed")
  if config.data.local_val.num_videos > 0 and config.data.local_val.source not in sources:
    _fail("data.local_val.source",
          f"{config.data.local_val.source!r} is not a training source ({sorted(sources)})")
  if config.data.on_bad_sample not in ("error", "skip"):
    _fail("data.on_bad_sample", f"{config.data.on_bad_sample!r} is not 'error' or 'skip'")
  inp = config.input
  if inp.num_frames < 1:
    _fail("input.num_frames", f"must be >= 1, got {inp.num_frames}")
  if inp.sampling_frame_range < 0:
    _fail("input.sampling_frame_range", f"must be >= 0, got {inp.sampling_frame_range}")
  if inp.max_instances < 1:
    _fail("input.max_instances", f"must be >= 1, got {inp.max_instances}")
  if not inp.min_size_train or min(inp.min_size_train) < 1:
    _fail("input.min_size_train", f"needs positive sizes, got {inp.min_size_train}")
  for bucket in inp.size_buckets:
    if len(bucket) != 2 or any(s % inp.size_divisibility for s in bucket):
      _fail("input.size_buckets",
            f"{tuple(bucket)} is not an (H, W) pair of multiples of {inp.size_divisibility}")
  if not 0 <= inp.flip_prob <= 1:
    _fail("input.flip_prob", f"must be in [0, 1], got {inp.flip_prob}")
  if config.batch_size < 1:
    _fail("batch_size", f"must be >= 1, got {config.batch_size}")
  if config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps:
    _fail("grad_accum_steps",
          f"must be >= 1 and divide batch_size={config.batch_size}, got {config.grad_accum_steps}")
  if config.loss.matcher not in ("scipy", "hungarian", "greedy"):
    _fail("loss.matcher", f"{config.loss.matcher!r} is not scipy, hungarian or greedy")
  # The image model's auxiliary losses need their head on the mask features.
  for weight_key, head_key in (("semantic_weight", "semantic_head"),
                               ("embedding_weight", "embedding_dim")):
    head = config.model.get(head_key)
    if config.loss[weight_key] and (config.model_name != "mask2former" or not head):
      _fail(f"loss.{weight_key}", f"needs model_name='mask2former' and model.{head_key} set "
            f"(got {config.model_name!r}, {head_key}={head})")
  decoder = config.model.get("decoder")
  if decoder is not None and decoder.get("mask_piloting") and config.model_name not in (
      "mask2former", "mask2former_vis"):
    _fail("model.decoder.mask_piloting", "trains the decoder of model_name='mask2former' or "
          f"'mask2former_vis' (got {config.model_name!r}, whose training would not pilot); "
          "init_from ignores an export's pilot parameters, so leave it False here")
  votes = decoder is not None and decoder.get("peak_prior_votes", False)
  if votes and not decoder.get("peak_prior"):
    _fail("model.decoder.peak_prior_votes", "needs model.decoder.peak_prior=True")
  width = decoder.get("centre_offset_width", 0) if decoder is not None else 0
  if width < 0 or (width and not votes):
    _fail("model.decoder.centre_offset_width", f"must be 0 or, with "
          f"model.decoder.peak_prior_votes=True, > 0 (got {width}, votes={bool(votes)})")
  if config.loss.get("centre_offset_weight") and (
      not votes or config.model_name not in ("mask2former", "mask2former_vis")):
    _fail("loss.centre_offset_weight", "trains the centre votes of model_name='mask2former' or "
          "'mask2former_vis' with model.decoder.peak_prior_votes=True (got "
          f"{config.model_name!r}, peak_prior_votes={bool(votes)})")
  vita_section = config.model.get("vita")
  if vita_section is not None and vita_section.get("peak_prior_votes", False) and not (
      votes and vita_section.get("peak_prior")):
    _fail("model.vita.peak_prior_votes", "needs model.vita.peak_prior=True and the detector's "
          "centre votes (model.decoder.peak_prior_votes=True)")
  for key, section in (("model.decoder", decoder), ("model.vita", config.model.get("vita"))):
    side = section.get("peak_prior_template", 0) if section is not None else 0
    if side < 0 or side == 1:
      _fail(f"{key}.peak_prior_template", f"must be 0 (no template) or >= 2, got {side}")
  if config.dtype not in ("float32", "bfloat16", "float16"):
    _fail("dtype", f"{config.dtype!r} is not float32, bfloat16 or float16")
  return config
