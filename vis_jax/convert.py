"""PyTorch checkpoints → the inference-parameter format ``--config.init_from`` reads.

``python -m vis_jax.convert --from SOURCE --input FILE --config CONFIG[:variant] --output DIR
[--allow-missing] [--allow-unexpected] [--allow-mismatched] [--config.key=value ...]``

1. builds the model of ``CONFIG`` (``config.model_name`` → bundle) and its variable shapes
   with ``jax.eval_shape`` (nothing is initialised);
2. reads ``FILE`` (``load_state_dict``): ``.safetensors``; ``.bin`` / ``.pth`` / ``.pt`` via
   ``torch.load(weights_only=True)`` (a detectron2 ``.pth`` is ``{"model": state_dict, ...}``);
   ``.pkl`` detectron2 / Detectron model-zoo pickles through a restricted unpickler that only
   rebuilds numpy arrays, numpy scalars and plain containers and refuses every other global;
3. converts with ``CONVERTERS[SOURCE]`` and prints a strict report: template tensors with no
   source (missing), source tensors nothing used (unexpected), shape mismatches, and the known
   unused buffers that were skipped (ignored);
4. exits with status 2 on any missing / unexpected / mismatched tensor unless the matching
   ``--allow-*`` flag is given; otherwise writes ``checkpointing.save_inference_params(DIR, ...)``
   (only converted tensors: what is missing or shape-mismatched keeps the run's own
   initialisation when ``init_from`` loads the file) plus ``DIR/conversion.json`` (the report).

Sources: ``hf_mask2former`` (Hugging Face ``Mask2FormerForUniversalSegmentation``) and
``detectron2`` (facebookresearch/Mask2Former, also the frame-level part of M2F-VIS / VITA
checkpoints), both for ``model_name = "mask2former"`` and ``"mask2former_vis"`` (official M2F-VIS
checkpoints have the image model's key names), and ``vita`` (sukjunhwang/VITA checkpoints for
``model_name = "vita"``: the Mask2Former keys → ``detector/*``, ``vita_module.*`` → ``vita/*``;
``vita_criterion.empty_weight`` is a known unused buffer). A converter is
``fn(state_dict, abstract_params, abstract_state, config) -> Conversion``; new model families
add an entry to ``CONVERTERS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import traverse_util

from configs import common
from vis_jax import checkpointing
from vis_jax import convert_backbones as cb
from vis_jax import convert_mask2former_heads as heads

EXIT_INCOMPLETE = 2

# ---- reading checkpoints -------------------------------------------------------------------

# (module, name) globals a model-zoo pickle may reference: numpy array / dtype / scalar
# reconstruction, the bytes helper of protocol-2 pickles and plain containers. Anything else
# (os.system, builtins.eval, arbitrary classes) could run code while unpickling.
_PICKLE_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    # Python 2 spellings (Detectron-era pickles)
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
})


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle references a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _PICKLE_ALLOWED:
      raise UnsafePickleError(
          f"refusing to unpickle global {module}.{name}: a checkpoint .pkl may only contain "
          "numpy arrays and plain containers")
    return super().find_class(module, name)


def load_pickle(path: str) -> Any:
  """Unpickles a detectron2 / Detectron ``.pkl`` safely (``latin1`` for Python-2 pickles)."""
  with open(path, "rb") as f:
    return _RestrictedUnpickler(f, encoding="latin1").load()


def _tensor_to_numpy(value: Any) -> Any:
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # bf16/fp16 have no (or a lossy) numpy path; fp32 is exact
    return value.numpy()
  return value


def _unwrap(data: Any, path: str) -> dict[str, Any]:
  """The state dict inside a checkpoint container (``{"model": sd, ...}`` or ``sd`` itself)."""
  if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
    data = data["model"]
  if not isinstance(data, Mapping) or not data:
    raise ValueError(f"{path}: no state dict found (expected a mapping name → tensor, or "
                     f"{{'model': state_dict, ...}})")
  out = {}
  for key, value in data.items():
    value = _tensor_to_numpy(value)
    if not isinstance(key, str) or not hasattr(value, "shape"):
      continue  # bookkeeping such as "__author__" or "matching_heuristics"
    out[key] = np.asarray(value)
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into ``{name: numpy array}`` (see the module docstring)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input {path} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return _unwrap(load_file(path), path)
  if ext in (".bin", ".pth", ".pt"):
    import torch
    try:
      data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise ValueError(f"{path}: torch.load(weights_only=True) refused the file: {e}") from e
    return _unwrap(data, path)
  if ext == ".pkl":
    return _unwrap(load_pickle(path), path)
  raise ValueError(f"--input {path}: unknown extension {ext!r} (.safetensors, .bin, .pth, .pt, "
                   ".pkl)")


# ---- reports and converters ------------------------------------------------------------------


@dataclasses.dataclass
class Report:
  """What a conversion did; names are source keys or ``a/b/leaf`` template paths."""

  converted: int = 0
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  def lines(self, max_ignored: int = 3) -> list[str]:
    """Summary, then every missing / unexpected / mismatched name (ignored ones abridged)."""
    out = [f"converted {self.converted} tensors; missing {len(self.missing)}, unexpected "
           f"{len(self.unexpected)}, shape-mismatched {len(self.mismatched)}, ignored "
           f"{len(self.ignored)} (known unused buffers)"]
    for name in ("missing", "unexpected", "mismatched"):
      out += [f"  {name}: {item}" for item in getattr(self, name)]
    out += [f"  ignored: {item}" for item in self.ignored[:max_ignored]]
    if len(self.ignored) > max_ignored:
      out.append(f"  ignored: ... {len(self.ignored) - max_ignored} more in conversion.json")
    return out


@dataclasses.dataclass
class Conversion:
  params: dict[str, Any]
  model_state: dict[str, Any]
  report: Report


Converter = Callable[[Mapping[str, np.ndarray], Any, Any, common.ConfigDict], Conversion]

# Buffers of the official / HF models that are never parameters.
_IGNORED_KEYS = (r"^criterion\.empty_weight$", r"^pixel_(mean|std)$")
_HEAD_PREFIXES = {"official": ("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."),
                  "hf": ("model.pixel_level_module.decoder.", "model.transformer_module.",
                         "class_predictor.")}
_BACKBONE_PREFIX = {"official": cb.D2_PREFIX, "hf": cb.HF_MASK2FORMER_PREFIX}
_BACKBONE_CONVERTERS = {("resnet", "official"): cb.convert_resnet_d2,
                        ("resnet", "hf"): cb.convert_resnet_hf,
                        ("swin", "official"): cb.convert_swin_d2,
                        ("swin", "hf"): cb.convert_swin_hf}


def _concrete(tree: Any) -> dict[str, Any]:
  """Only the converted (numpy) leaves; template placeholders are dropped."""
  flat = traverse_util.flatten_dict(dict(tree)) if tree else {}
  kept = {k: v for k, v in flat.items() if isinstance(v, np.ndarray)}
  return traverse_util.unflatten_dict(kept) if kept else {}


def convert_mask2former(state_dict: Mapping[str, np.ndarray], abstract_params: Mapping[str, Any],
                        abstract_state: Mapping[str, Any], source: str,
                        ) -> tuple[dict[str, Any], dict[str, Any], Report]:
  """Backbone + pixel decoder + decoder of a Mask2Former state dict.

  Args:
    state_dict: full model state dict (``official`` detectron2 names or ``hf``).
    abstract_params: ``{"backbone", "pixel_decoder", "predictor"}`` parameter shapes (the
      ``Mask2FormerModel`` tree, or the same sub-tree of a model that embeds it).
    abstract_state: ``{"frozen_bn": {"backbone": ...}}`` for a ResNet, else ``{}``.
    source: ``"official"`` or ``"hf"``.

  Returns:
    ``(params, model_state, report)``; the trees hold converted tensors only. Keys outside the
    backbone / head prefixes are NOT judged here (the caller decides what else is expected).
  """
  family = "resnet" if "stem" in abstract_params["backbone"] else "swin"
  bb_template = {"params": abstract_params["backbone"]}
  frozen = dict(abstract_state or {}).get("frozen_bn", {}).get("backbone")
  if frozen is not None:
    bb_template["frozen_bn"] = frozen
  bb_vars, bb_report = _BACKBONE_CONVERTERS[(family, source)](state_dict, bb_template)
  head_params, head_report = heads.convert_mask2former_heads(
      state_dict, source, templates={"pixel_decoder": abstract_params["pixel_decoder"],
                                     "predictor": abstract_params["predictor"]})
  report = Report(
      converted=bb_report.converted + len(head_report.mapped),
      missing=bb_report.missing + head_report.missing,
      unexpected=bb_report.unexpected + head_report.unexpected,
      mismatched=[f"{k}: expected {a}, got {b}" for k, a, b in bb_report.mismatched] + [
          f"{k} -> {p}: expected {a}, got {b}" for p, k, a, b in head_report.shape_mismatch],
      ignored=list(bb_report.ignored))
  params = {"backbone": _concrete(bb_vars["params"]), **head_params}
  model_state = {}
  if frozen is not None:
    model_state = {"frozen_bn": {"backbone": _concrete(bb_vars["frozen_bn"])}}
  return params, model_state, report


def _report_leftovers(state_dict: Mapping[str, Any], known: tuple[str, ...],
                      ignored: tuple[str, ...], report: Report) -> None:
  """Source keys outside the ``known`` prefixes: ``ignored`` patterns, else unexpected."""
  for key in sorted(state_dict):
    if key.startswith(known):
      continue
    if any(re.search(p, key) for p in ignored):
      report.ignored.append(key)
    else:
      report.unexpected.append(key)


def _mask2former_converter(source: str) -> Converter:

  def convert(state_dict, abstract_params, abstract_state, config):
    # Mask2Former-VIS has the image model's parameter tree and official key names (its 3-D
    # positional encoding has no parameters), so both take the same mapping.
    if config.model_name not in ("mask2former", "mask2former_vis"):
      raise ValueError(f"this converter builds model_name 'mask2former' or 'mask2former_vis', "
                       f"the config has {config.model_name!r}")
    params, model_state, report = convert_mask2former(state_dict, abstract_params,
                                                      abstract_state, source)
    _report_leftovers(state_dict, (_BACKBONE_PREFIX[source],) + _HEAD_PREFIXES[source],
                      _IGNORED_KEYS, report)
    return Conversion(params, model_state, report)

  return convert


def _convert_vita(state_dict: Mapping[str, np.ndarray], abstract_params: Mapping[str, Any],
                  abstract_state: Mapping[str, Any], config: common.ConfigDict) -> Conversion:
  """Official VITA checkpoints (sukjunhwang/VITA): the detectron2 Mask2Former keys become
  ``detector/*`` (``convert_mask2former``), the ``vita_module.*`` keys ``vita/*``
  (``convert_vita.vita_params_from_torch``); one report for both."""
  from vis_jax import convert_vita

  if config.model_name != "vita":
    raise ValueError(f"--from vita builds model_name 'vita', the config has "
                     f"{config.model_name!r}")
  det_state = {col: tree["detector"] for col, tree in dict(abstract_state or {}).items()
               if "detector" in tree}
  det_params, det_model_state, report = convert_mask2former(
      state_dict, abstract_params["detector"], det_state, "official")
  # The head converter names template paths from the detector's root; here they are under
  # ``detector/`` (backbone entries are source keys and stay as they are).
  report.missing = [re.sub(r"^(pixel_decoder|predictor)/", r"detector/\1/", m)
                    for m in report.missing]
  report.mismatched = [re.sub(r" -> (pixel_decoder|predictor)/", r" -> detector/\1/", m)
                       for m in report.mismatched]
  vita_params, vita_report = convert_vita.vita_params_from_torch(
      state_dict, config.model.vita, prefix=convert_vita.OFFICIAL_PREFIX,
      template=abstract_params["vita"])
  # Only tensors with the template's path and shape are written, as for the detector: a
  # mismatched one (e.g. the COCO class head into a YTVIS config with --allow-mismatched)
  # keeps the run's own initialisation when init_from loads the file.
  expected = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      dict(abstract_params["vita"])).items()}
  flat_vita = traverse_util.flatten_dict(vita_params) if vita_params else {}
  kept = {k: v for k, v in flat_vita.items() if expected.get(k) == tuple(v.shape)}
  report.converted += len(kept)
  report.missing += vita_report["missing"] + [
      f"vita/{p}" for p in vita_report["template_missing"]]
  report.unexpected += vita_report["unexpected"]
  report.mismatched += [f"vita/{'/'.join(k)}: expected {expected[k]}, got {tuple(v.shape)}"
                        for k, v in sorted(flat_vita.items())
                        if k in expected and k not in kept]
  _report_leftovers(state_dict, (_BACKBONE_PREFIX["official"], *_HEAD_PREFIXES["official"],
                                 convert_vita.OFFICIAL_PREFIX),
                    _IGNORED_KEYS + (r"^vita_criterion\.empty_weight$",), report)
  vita_tree = traverse_util.unflatten_dict(kept) if kept else {}
  params = {k: v for k, v in (("detector", det_params), ("vita", vita_tree)) if v}
  model_state = {col: {"detector": tree} for col, tree in det_model_state.items()}
  return Conversion(params, model_state, report)


CONVERTERS: dict[str, Converter] = {
    "hf_mask2former": _mask2former_converter("hf"),
    "detectron2": _mask2former_converter("official"),
    "vita": _convert_vita,
}


# ---- config, templates, CLI --------------------------------------------------------------------


def load_config(spec: str, overrides: Sequence[str] = ()) -> common.ConfigDict:
  """``configs/x.py[:variant]`` plus ``--config.a.b=value`` overrides, as ``vis_jax.main``."""
  from ml_collections import config_flags

  fv = flags.FlagValues()
  argv = ["convert", f"--config={spec}", *overrides]
  holder = config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                           sys_argv=argv)
  fv(argv)
  return common.validate(holder.value)


def dummy_batch(config: common.ConfigDict, keys: Sequence[str]) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract one-clip batch of the input-pipeline layout, for ``eval_shape(bundle.init)``."""
  inp = config.input
  h, w = (tuple(inp.size_buckets[0]) if inp.size_buckets
          else (2 * inp.size_divisibility,) * 2)
  t, g = inp.num_frames, inp.max_instances
  spec = dict(images=((1, t, h, w, 3), jnp.uint8), image_valid=((1, h, w), jnp.bool_),
              masks=((1, g, t, h, w), jnp.bool_), labels=((1, g), jnp.int32),
              present=((1, g, t), jnp.bool_), instance_valid=((1, g), jnp.bool_),
              track_ids=((1, g), jnp.int32))
  return {k: jax.ShapeDtypeStruct(*spec[k]) for k in keys}


def abstract_variables(config: common.ConfigDict) -> tuple[Any, Any]:
  """``(params, model_state)`` shapes of ``config``'s model, nothing computed."""
  from vis_jax.models import registry

  bundle = registry.get_bundle(config)
  batch = dummy_batch(config, bundle.batch_keys)
  return jax.eval_shape(lambda b: bundle.init(jax.random.key(0), b), batch)


def _leaf_count(tree: Any) -> int:
  return len(jax.tree_util.tree_leaves(tree))


def run(source: str, input_path: str, config: common.ConfigDict, output: str,
        allow_missing: bool = False, allow_unexpected: bool = False,
        allow_mismatched: bool = False, out: Any = None) -> int:
  """Converts and writes; returns the exit status (0, or 2 for a refused conversion)."""
  out = sys.stdout if out is None else out
  abstract_params, abstract_state = abstract_variables(config)
  state_dict = load_state_dict(input_path)
  conversion = CONVERTERS[source](state_dict, abstract_params, abstract_state, config)
  report = conversion.report
  print(f"{source} {input_path} → {config.model_name}: {_leaf_count(abstract_params)} params + "
        f"{_leaf_count(abstract_state)} state tensors in the model, {len(state_dict)} in the "
        "file", file=out)
  for line in report.lines():
    print(line, file=out)
  refused = [(name, flag) for name, items, flag, allowed in (
      ("missing", report.missing, "--allow-missing", allow_missing),
      ("unexpected", report.unexpected, "--allow-unexpected", allow_unexpected),
      ("shape-mismatched", report.mismatched, "--allow-mismatched", allow_mismatched))
             if items and not allowed]
  if refused:
    print(f"error: conversion incomplete: {', '.join(n for n, _ in refused)} tensors (listed "
          f"above); nothing written. To accept, pass {' '.join(f for _, f in refused)}.",
          file=sys.stderr)
    return EXIT_INCOMPLETE
  directory = checkpointing.save_inference_params(
      output, conversion.params, conversion.model_state,
      config_json=config.to_json_best_effort(indent=2))
  with open(os.path.join(directory, "conversion.json"), "w") as f:
    json.dump(dict(source=source, input=os.path.abspath(input_path), **dataclasses.asdict(report)),
              f, indent=2)
  print(f"wrote {directory}", file=out)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vis_jax.convert", description=__doc__.split(
      "\n\n")[0], epilog="Extra --config.key=value arguments override the config.")
  parser.add_argument("--from", dest="source", required=True, choices=sorted(CONVERTERS))
  parser.add_argument("--input", required=True, help="checkpoint file")
  parser.add_argument("--config", required=True, help="configs/NAME.py[:variant]")
  parser.add_argument("--output", required=True, help="directory to write")
  parser.add_argument("--allow-missing", action="store_true",
                      help="accept model tensors the file lacks (they keep their init)")
  parser.add_argument("--allow-unexpected", action="store_true",
                      help="accept file tensors the model does not use")
  parser.add_argument("--allow-mismatched", action="store_true",
                      help="accept (skip) tensors whose shape differs")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  try:
    config = load_config(args.config, rest)
    return run(args.source, args.input, config, args.output, args.allow_missing,
               args.allow_unexpected, args.allow_mismatched)
  except (FileNotFoundError, ValueError, AttributeError, pickle.UnpicklingError,
          flags.Error) as e:
    # User errors (ConfigError and UnsafePickleError included): one line, no traceback.
    print(f"error: {e}", file=sys.stderr)
    return EXIT_INCOMPLETE


if __name__ == "__main__":
  sys.exit(main())
