"""PyTorch state dicts → Flax variables for the backbones (library only; no CLI).

Two naming schemes are understood for each backbone (spec §7.1, §7.4):

* detectron2 / Mask2Former / VITA (``prefix="backbone."`` inside a full model; ``""`` for the
  ImageNet ``R-50.pkl`` / converted Swin ``.pkl`` files):
  ``stem.conv1.weight``, ``stem.conv1.norm.{weight,bias,running_mean,running_var}``,
  ``res{2..5}.{i}.conv{1,2,3}.weight`` + ``.norm.*``, ``res{k}.0.shortcut.weight`` + ``.norm.*``;
  Swin ``patch_embed.{proj,norm}.*``, ``layers.{s}.blocks.{b}.{norm1, attn.qkv, attn.proj,
  attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}.*``,
  ``layers.{s}.downsample.{reduction,norm}.*``, ``norm{0..3}.*``.
* Hugging Face ``Mask2FormerForUniversalSegmentation`` (``prefix=HF_MASK2FORMER_PREFIX``;
  ``""`` for a bare ``ResNetBackbone`` / ``SwinBackbone``):
  ResNet ``embedder.embedder.{convolution,normalization}.*``,
  ``encoder.stages.{s}.layers.{i}.{layer.{j},shortcut}.{convolution,normalization}.*``;
  Swin (transformers ≥ 5) ``swin.embeddings.{patch_embeddings.projection,norm}.*``,
  ``swin.encoder.layers.{s}.blocks.{b}.{layernorm_before, attention.{q,k,v,o}_proj,
  attention.relative_position_bias.relative_position_bias_table, layernorm_after, mlp.fc1,
  mlp.fc2}.*``, ``hidden_states_norms.stage{1..4}.*``. Hub checkpoints written by transformers 4
  (no ``swin.``; ``attention.self.{query,key,value}``, ``attention.output.dense``,
  ``intermediate.dense``, ``output.dense``) are renamed to the same names first.

Every converter takes a ``template`` (the variables of the target module: ``module.init(...)``
or ``jax.eval_shape(module.init, ...)``) and returns ``(variables, report)``: the template with
every leaf found in the state dict replaced by a float32 numpy array. ``report`` lists missing
keys (template leaves with no source; they keep the template value), unexpected keys (under
``prefix``, unused), shape mismatches (kept from the template) and ignored keys (derived buffers
such as ``relative_position_index``, ``num_batches_tracked``). Nothing raises: the caller decides
(``report.ok``, ``report.raise_if_incomplete()``).

Layouts: conv ``[O, I, kh, kw]`` → ``[kh, kw, I, O]``; linear ``[out, in]`` → ``[in, out]``;
LayerNorm ``weight`` → ``scale``; FrozenBN statistics keep their names (``frozen_bn``
collection). HF's separate q/k/v projections are concatenated into the single ``qkv`` linear of
the official layout (rows ordered q, k, v).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

HF_MASK2FORMER_PREFIX = "model.pixel_level_module.encoder."
D2_PREFIX = "backbone."

Path = tuple[str, ...]
# (source keys without prefix, function of their arrays → the Flax-layout array)
Rule = tuple[Sequence[str], Callable[[list[np.ndarray]], np.ndarray]]

_IGNORE_ALWAYS = (r"(^|\.)num_batches_tracked$", r"(^|\.)relative_position_index$",
                  r"(^|\.)attn_mask$")


@dataclasses.dataclass
class ConversionReport:
  """What a conversion did; keys are full state-dict names (with prefix)."""

  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
      default_factory=list)  # (key, expected Flax shape, converted shape)
  ignored: list[str] = dataclasses.field(default_factory=list)
  converted: int = 0

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def summary(self) -> str:
    return (f"converted {self.converted}, missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, shape-mismatched {len(self.mismatched)}, ignored "
            f"{len(self.ignored)}")

  def raise_if_incomplete(self) -> None:
    if not self.ok:
      raise ValueError(f"backbone conversion incomplete: {self.summary()}; missing "
                       f"{self.missing[:5]}, unexpected {self.unexpected[:5]}, mismatched "
                       f"{self.mismatched[:5]}")


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _conv(arrays: list[np.ndarray]) -> np.ndarray:
  return arrays[0].transpose(2, 3, 1, 0)


def _linear(arrays: list[np.ndarray]) -> np.ndarray:
  return arrays[0].T


def _same(arrays: list[np.ndarray]) -> np.ndarray:
  return arrays[0]


def _concat_linear(arrays: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(arrays, axis=0).T


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(arrays, axis=0)


def _param(name: str, leaf: str, ndim: int) -> Rule:
  """A single-key rule for a Flax leaf of a conv / linear / norm module named ``name``."""
  if leaf == "kernel":
    return [f"{name}.weight"], _conv if ndim == 4 else _linear
  if leaf == "scale":
    return [f"{name}.weight"], _same
  return [f"{name}.{leaf}"], _same


def convert(state_dict: Mapping[str, Any], template: Mapping[str, Any], prefix: str,
            rule: Callable[[Path, int], Rule | None],
            rename: Callable[[str], str] = lambda k: k,
            ignore: Sequence[str] = ()) -> tuple[dict[str, Any], ConversionReport]:
  """Generic driver: fills ``template`` leaf by leaf from ``state_dict`` through ``rule``.

  Args:
    state_dict: name → array (numpy or torch); only keys starting with ``prefix`` are considered.
    template: Flax variables ``{collection: tree}``; leaves need ``.shape`` and ``.dtype``.
    prefix: stripped from state-dict keys (and put back in the report).
    rule: ``(path incl. collection, leaf ndim) → (source keys, transform)`` or None if the leaf
      has no source in this format (reported missing).
    rename: applied to each prefix-stripped key first (legacy aliases).
    ignore: extra regexes (over stripped keys) of keys that are known to be unused.

  Returns:
    (variables with the template's structure, report).
  """
  source: dict[str, np.ndarray] = {}
  original: dict[str, str] = {}
  for key, value in state_dict.items():
    if key.startswith(prefix):
      short = rename(key[len(prefix):])
      source[short] = value
      original[short] = key
  report = ConversionReport()
  used: set[str] = set()
  flat = traverse_util.flatten_dict(dict(template))
  out = {}
  for path, leaf in flat.items():
    out[path] = leaf
    found = rule(path, len(leaf.shape))
    keys, fn = found if found is not None else ([f"<no source for {'/'.join(path)}>"], None)
    absent = [k for k in keys if k not in source]
    if absent or fn is None:
      report.missing.extend(prefix + k for k in (absent or keys))
      continue
    used.update(keys)
    array = np.asarray(fn([_to_numpy(source[k]) for k in keys]), np.float32)
    if tuple(array.shape) != tuple(leaf.shape):
      report.mismatched.append(
          (",".join(original[k] for k in keys), tuple(leaf.shape), tuple(array.shape)))
      continue
    out[path] = array
    report.converted += 1
  patterns = tuple(_IGNORE_ALWAYS) + tuple(ignore)
  for short, key in original.items():
    if short in used:
      continue
    if any(re.search(p, short) for p in patterns):
      report.ignored.append(key)
    else:
      report.unexpected.append(key)
  return traverse_util.unflatten_dict(out), report


# ---- ResNet ---------------------------------------------------------------------------------

def _resnet_module(path: Path) -> tuple[str, list[str], str]:
  """``(collection, module names, leaf)``; module names like ``res2/block0/conv1``."""
  collection, *names, leaf = path
  if names and names[-1] == "norm":
    names = names[:-1]
  return collection, names, leaf


def _resnet_d2_rule(path: Path, ndim: int) -> Rule | None:
  collection, names, leaf = _resnet_module(path)
  parts = [re.sub(r"^block(\d+)$", r"\1", n) for n in names]
  module = ".".join(parts)
  if collection == "frozen_bn":
    return [f"{module}.norm.{leaf}"], _same
  return _param(module, leaf, ndim)


def _resnet_hf_rule(path: Path, ndim: int) -> Rule | None:
  collection, names, leaf = _resnet_module(path)
  if names == ["stem", "conv1"]:
    module = "embedder.embedder"
  else:
    stage, block, conv = names
    base = f"encoder.stages.{int(stage[3:]) - 2}.layers.{int(block[5:])}"
    module = (f"{base}.shortcut" if conv == "shortcut"
              else f"{base}.layer.{int(conv[4:]) - 1}")
  if collection == "frozen_bn":
    return [f"{module}.normalization.{leaf}"], _same
  return [f"{module}.convolution.weight"], _conv


def convert_resnet_d2(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                      prefix: str = D2_PREFIX) -> tuple[dict[str, Any], ConversionReport]:
  """detectron2 / Mask2Former ResNet keys → ``{"params", "frozen_bn"}`` of ``ResNet``.

  ``prefix="backbone."`` for full Mask2Former/VITA checkpoints, ``""`` for the ImageNet
  ``R-50.pkl`` (torchvision weights already renamed to detectron2 names; its leftover classifier
  keys, e.g. ``stem.fc.*``, are reported unexpected).
  """
  return convert(state_dict, template, prefix, _resnet_d2_rule)


def convert_resnet_hf(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                      prefix: str = HF_MASK2FORMER_PREFIX
                      ) -> tuple[dict[str, Any], ConversionReport]:
  """Hugging Face ``ResNetBackbone`` keys → ``{"params", "frozen_bn"}`` of ``ResNet``.

  The module must be built with ``stride_in_1x1 = config.downsample_in_bottleneck``; HF's
  ``downsample_in_first_stage=True`` has no detectron2 equivalent (``res2`` never strides).
  For a standalone ``ResNetModel`` / ``ResNetForImageClassification`` use ``prefix=""`` /
  ``"resnet."`` (its ``classifier.*`` keys fall outside the prefix).
  """
  return convert(state_dict, template, prefix, _resnet_hf_rule)


# ---- Swin -----------------------------------------------------------------------------------

def _swin_d2_rule(path: Path, ndim: int) -> Rule | None:
  _, *names, leaf = path
  module = ".".join(re.sub(r"^(layers|blocks)_(\d+)$", r"\1.\2", n) for n in names)
  if leaf == "relative_position_bias_table":
    return [f"{module}.relative_position_bias_table"], _same
  return _param(module, leaf, ndim)


_HF_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after",
             "attn/proj": "attention.o_proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}


def _swin_hf_rule(path: Path, ndim: int) -> Rule | None:
  _, *names, leaf = path
  if names[0] == "patch_embed":
    module = {"proj": "embeddings.patch_embeddings.projection", "norm": "embeddings.norm"}[names[1]]
    return _param(module, leaf, ndim)
  if re.fullmatch(r"norm\d", names[0]):
    return _param(f"hidden_states_norms.stage{int(names[0][4:]) + 1}", leaf, ndim)
  stage = f"encoder.layers.{names[0].split('_')[1]}"
  if names[1] == "downsample":
    return _param(f"{stage}.downsample.{names[2]}", leaf, ndim)
  block = f"{stage}.blocks.{names[1].split('_')[1]}"
  inner = "/".join(names[2:])
  if leaf == "relative_position_bias_table":
    return [f"{block}.attention.relative_position_bias.relative_position_bias_table"], _same
  if inner == "attn/qkv":
    keys = [f"{block}.attention.{p}_proj.{'weight' if leaf == 'kernel' else 'bias'}"
            for p in "qkv"]
    return keys, _concat_linear if leaf == "kernel" else _concat
  return _param(f"{block}.{_HF_BLOCK[inner]}", leaf, ndim)


# transformers-4 Hub names → transformers-5 names (the library's own "swin" key mapping), applied
# after the optional "swin." wrapper of SwinBackbone is dropped.
_HF_SWIN_LEGACY = (
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.relative_position_bias_table$",
     ".attention.relative_position_bias.relative_position_bias_table"),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def _swin_hf_rename(key: str) -> str:
  key = key[len("swin."):] if key.startswith("swin.") else key
  for pattern, replacement in _HF_SWIN_LEGACY:
    key = re.sub(pattern, replacement, key)
  return key


def convert_swin_d2(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                    prefix: str = D2_PREFIX) -> tuple[dict[str, Any], ConversionReport]:
  """Mask2Former ``D2SwinTransformer`` keys → ``{"params"}`` of ``SwinTransformer``.

  ``prefix=""`` for the converted ImageNet ``swin_*.pkl`` files: those have no ``norm0..3``
  (reported missing; initialise them fresh) and carry the classifier's ``norm.*`` / ``head.*``
  (reported unexpected).
  """
  return convert(state_dict, template, prefix, _swin_d2_rule)


def convert_swin_hf(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                    prefix: str = HF_MASK2FORMER_PREFIX
                    ) -> tuple[dict[str, Any], ConversionReport]:
  """Hugging Face ``SwinBackbone`` keys (transformers 4 or 5 naming) → ``{"params"}``.

  ``layernorm.*`` (the unused final norm of the wrapped ``SwinModel``) is ignored, as HF does.
  """
  return convert(state_dict, template, prefix, _swin_hf_rule, rename=_swin_hf_rename,
                 ignore=(r"^layernorm\.",))
