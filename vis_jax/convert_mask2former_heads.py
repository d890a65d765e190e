"""PyTorch → Flax weight mapping for the Mask2Former pixel decoder and transformer decoder.

Two checkpoint namings are understood (spec §7.1):

* ``official``: facebookresearch/Mask2Former (also M2F-VIS and VITA, which share the prefixes):
  ``sem_seg_head.pixel_decoder.*`` and ``sem_seg_head.predictor.*``; attention layers are
  ``nn.MultiheadAttention`` with a packed ``in_proj_weight [3C, C]``.
* ``hf``: Hugging Face ``Mask2FormerForUniversalSegmentation``:
  ``model.pixel_level_module.decoder.*``, ``model.transformer_module.*`` and ``class_predictor.*``;
  its decoder self-attention has separate ``q_proj/k_proj/v_proj`` while its cross-attention is a
  packed ``nn.MultiheadAttention``.

Targets are the parameter trees of ``vis_jax.models.pixel_decoder.MSDeformAttnPixelDecoder`` and
``vis_jax.models.mask2former.MultiScaleMaskedTransformerDecoder``. Layouts (spec §7.4): Linear
``[out, in]`` → kernel ``[in, out]``; Conv ``[O, I, kh, kw]`` → ``[kh, kw, I, O]``; norms
``weight`` → ``scale``; Embedding ``weight`` → ``embedding``; packed in-projections split into
three row blocks (q, k, v).

Hugging Face vs official (transformers 5.23, checked against the official code and by
``tests/test_mask2former_decoder.py``): the forward functions are identical in eval mode —
same 0.5 sigmoid threshold and fully-masked-row fallback, same ``decoder_norm`` feeding both
heads, same 2-D sine encoding (HF writes the all-valid cumsum as an ``arange``), same bilinear
FPN fusion and 1x1 ``mask_features``. Differences: names (``queries_features`` is the content
query ``query_feat``, ``queries_embedder`` the positional ``query_embed``; the pixel decoder's
``level_embed`` is not under ``transformer.``; the class head ``class_predictor`` sits outside the
decoder); packed vs separate self-attention projections; HF's pixel decoder does not return the
pre-projection 1/4 map; in training HF uses ``config.dropout`` also as decoder layer-drop and clamps
non-finite encoder activations; HF's encoder FFN width is configurable (official: 1024) while
points (4) and levels (3) are hard-coded; initialisation differs (HF draws the class head from
N(0, 0.02) with zero bias instead of nn.Linear's default, and xavier-fills q/k/v separately
instead of as one packed matrix) — irrelevant once weights are loaded.

Every function returns ``(params, report)``: ``params`` is a nested dict of numpy arrays and the
report lists the source keys that were not used (``unexpected``) and, when a template parameter
tree is given (e.g. ``jax.eval_shape`` of ``module.init``), the template leaves that received no
value (``missing``) and those whose shape differs (``shape_mismatch``; such values are left out).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

# (module-path regex, target template, kind). The regex is full-matched against the part of the
# key after the component prefix with the parameter name (last dotted field) removed; for kind
# "array" it is matched against the whole remainder. Targets use the regex groups {0}, {1}, ...
Rule = tuple[str, str, str]

_PIXEL_DECODER_OFFICIAL: list[Rule] = [
    (r"input_proj\.(\d+)\.0", "input_proj_{0}/conv", "conv"),
    (r"input_proj\.(\d+)\.1", "input_proj_{0}/norm", "norm"),
    (r"transformer\.level_embed", "level_embed", "array"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\."
     r"(sampling_offsets|attention_weights|value_proj|output_proj)",
     "encoder_layers_{0}/self_attn/{1}", "dense"),
    (r"transformer\.encoder\.layers\.(\d+)\.(linear1|linear2)", "encoder_layers_{0}/{1}", "dense"),
    (r"transformer\.encoder\.layers\.(\d+)\.(norm1|norm2)", "encoder_layers_{0}/{1}", "norm"),
    (r"mask_features", "mask_features", "conv"),
    (r"(adapter|layer)_(\d+)", "{0}_{1}/conv", "conv"),
    (r"(adapter|layer)_(\d+)\.norm", "{0}_{1}/norm", "norm"),
]

_PIXEL_DECODER_HF: list[Rule] = [
    (r"input_projections\.(\d+)\.0", "input_proj_{0}/conv", "conv"),
    (r"input_projections\.(\d+)\.1", "input_proj_{0}/norm", "norm"),
    (r"level_embed", "level_embed", "array"),
    (r"encoder\.layers\.(\d+)\.self_attn\."
     r"(sampling_offsets|attention_weights|value_proj|output_proj)",
     "encoder_layers_{0}/self_attn/{1}", "dense"),
    (r"encoder\.layers\.(\d+)\.fc1", "encoder_layers_{0}/linear1", "dense"),
    (r"encoder\.layers\.(\d+)\.fc2", "encoder_layers_{0}/linear2", "dense"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm", "encoder_layers_{0}/norm1", "norm"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm", "encoder_layers_{0}/norm2", "norm"),
    (r"mask_projection", "mask_features", "conv"),
    (r"(adapter|layer)_(\d+)\.0", "{0}_{1}/conv", "conv"),
    (r"(adapter|layer)_(\d+)\.1", "{0}_{1}/norm", "norm"),
]

_SELF = "transformer_self_attention_layers_{0}"
_CROSS = "transformer_cross_attention_layers_{0}"
_FFN = "transformer_ffn_layers_{0}"

_DECODER_OFFICIAL: list[Rule] = [
    (r"transformer_self_attention_layers\.(\d+)\.self_attn", _SELF + "/self_attn", "in_proj"),
    (r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj",
     _SELF + "/self_attn/out_proj", "dense"),
    (r"transformer_self_attention_layers\.(\d+)\.norm", _SELF + "/norm", "norm"),
    (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn", _CROSS + "/multihead_attn",
     "in_proj"),
    (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.out_proj",
     _CROSS + "/multihead_attn/out_proj", "dense"),
    (r"transformer_cross_attention_layers\.(\d+)\.norm", _CROSS + "/norm", "norm"),
    (r"transformer_ffn_layers\.(\d+)\.(linear1|linear2)", _FFN + "/{1}", "dense"),
    (r"transformer_ffn_layers\.(\d+)\.norm", _FFN + "/norm", "norm"),
    (r"decoder_norm", "decoder_norm", "norm"),
    # ``static_query`` is the pre-v2 name, renamed by the official ``_load_from_state_dict``.
    (r"query_feat|static_query", "query_feat_embed", "embed"),
    (r"query_embed", "query_embed", "embed"),
    (r"level_embed", "level_embed", "embed"),
    (r"input_proj\.(\d+)", "input_proj_{0}", "conv"),
    (r"class_embed", "class_embed", "dense"),
    (r"mask_embed\.layers\.(\d+)", "mask_embed/layers_{0}", "dense"),
]

_DECODER_HF: list[Rule] = [
    (r"decoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
     _SELF + "/self_attn/{1}", "dense"),
    (r"decoder\.layers\.(\d+)\.self_attn_layer_norm", _SELF + "/norm", "norm"),
    (r"decoder\.layers\.(\d+)\.cross_attn", _CROSS + "/multihead_attn", "in_proj"),
    (r"decoder\.layers\.(\d+)\.cross_attn\.out_proj", _CROSS + "/multihead_attn/out_proj",
     "dense"),
    (r"decoder\.layers\.(\d+)\.cross_attn_layer_norm", _CROSS + "/norm", "norm"),
    (r"decoder\.layers\.(\d+)\.fc1", _FFN + "/linear1", "dense"),
    (r"decoder\.layers\.(\d+)\.fc2", _FFN + "/linear2", "dense"),
    (r"decoder\.layers\.(\d+)\.final_layer_norm", _FFN + "/norm", "norm"),
    (r"decoder\.layernorm", "decoder_norm", "norm"),
    (r"queries_features", "query_feat_embed", "embed"),
    (r"queries_embedder", "query_embed", "embed"),
    (r"level_embed", "level_embed", "embed"),
    (r"input_projections\.(\d+)", "input_proj_{0}", "conv"),
    (r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0", "mask_embed/layers_{0}", "dense"),
]

_HF_CLASS_HEAD: list[Rule] = [(r"", "class_embed", "dense")]

SOURCES = ("official", "hf")
# Component → source → [(default prefix, rules), ...].
_COMPONENTS: dict[str, dict[str, list[tuple[str, list[Rule]]]]] = {
    "pixel_decoder": {
        "official": [("sem_seg_head.pixel_decoder.", _PIXEL_DECODER_OFFICIAL)],
        "hf": [("model.pixel_level_module.decoder.", _PIXEL_DECODER_HF)],
    },
    "predictor": {
        "official": [("sem_seg_head.predictor.", _DECODER_OFFICIAL)],
        "hf": [("model.transformer_module.", _DECODER_HF), ("class_predictor.", _HF_CLASS_HEAD)],
    },
}


@dataclasses.dataclass
class ConversionReport:
  """What a conversion did not map cleanly.

  Attributes:
    missing: template paths (``a/b/kernel``) that received no value.
    unexpected: source keys under the converted prefixes that were not used (unknown names,
      or mapped to a path absent from the template, shown as ``key -> path``).
    shape_mismatch: ``(path, source key, template shape, converted shape)``.
    mapped: target path → source key for everything converted.
  """
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  shape_mismatch: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
      default_factory=list)
  mapped: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.shape_mismatch)

  def prefixed(self, component: str) -> ConversionReport:
    """The same report with target paths prefixed by ``component/``."""
    return ConversionReport(
        missing=[f"{component}/{p}" for p in self.missing],
        unexpected=list(self.unexpected),
        shape_mismatch=[(f"{component}/{p}", k, a, b) for p, k, a, b in self.shape_mismatch],
        mapped={f"{component}/{p}": k for p, k in self.mapped.items()})

  def merge(self, other: ConversionReport) -> ConversionReport:
    return ConversionReport(self.missing + other.missing, self.unexpected + other.unexpected,
                            self.shape_mismatch + other.shape_mismatch,
                            {**self.mapped, **other.mapped})

  def __str__(self) -> str:
    lines = [f"mapped {len(self.mapped)}, missing {len(self.missing)}, unexpected "
             f"{len(self.unexpected)}, shape mismatches {len(self.shape_mismatch)}"]
    lines += [f"  missing: {p}" for p in self.missing]
    lines += [f"  unexpected: {k}" for k in self.unexpected]
    lines += [f"  shape: {p} <- {k}: expected {a}, got {b}" for p, k, a, b in self.shape_mismatch]
    return "\n".join(lines)


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _convert_param(kind: str, name: str, value: np.ndarray
                   ) -> list[tuple[str, np.ndarray]] | None:
  """``(relative target path, array)`` pairs for one source parameter, None if unknown."""
  if kind == "dense":
    return {"weight": [("kernel", value.T)], "bias": [("bias", value)]}.get(name)
  if kind == "conv":
    if name == "weight":
      if value.ndim != 4:
        return None
      return [("kernel", value.transpose(2, 3, 1, 0))]
    return [("bias", value)] if name == "bias" else None
  if kind == "norm":
    return {"weight": [("scale", value)], "bias": [("bias", value)]}.get(name)
  if kind == "embed":
    return [("embedding", value)] if name == "weight" else None
  if kind == "in_proj":
    if name not in ("in_proj_weight", "in_proj_bias") or value.shape[0] % 3:
      return None
    blocks = np.split(value, 3, axis=0)  # q, k, v row blocks
    leaf = "kernel" if name == "in_proj_weight" else "bias"
    return [(f"{p}_proj/{leaf}", b.T if leaf == "kernel" else b)
            for p, b in zip("qkv", blocks, strict=True)]
  raise ValueError(f"unknown rule kind {kind!r}")


def _match(rules: Sequence[Rule], rest: str) -> tuple[str, tuple[str, str] | None] | None:
  """``(target base path, (kind, param name) or None for whole arrays)`` of the first rule."""
  module, _, name = rest.rpartition(".")
  for pattern, target, kind in rules:
    m = re.fullmatch(pattern, rest if kind == "array" else module)
    if m:
      return target.format(*m.groups()), None if kind == "array" else (kind, name)
  return None


def _template_shapes(template: Any) -> dict[str, tuple[int, ...]]:
  if isinstance(template, Mapping) and set(template) == {"params"}:
    template = template["params"]
  flat = traverse_util.flatten_dict(dict(template), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def detect_source(state_dict: Mapping[str, Any]) -> str:
  """``"official"`` or ``"hf"`` from the key prefixes."""
  if any(k.startswith("sem_seg_head.") for k in state_dict):
    return "official"
  if any(k.startswith(("model.pixel_level_module.", "model.transformer_module."))
         for k in state_dict):
    return "hf"
  raise ValueError("state dict has neither official (sem_seg_head.*) nor Hugging Face "
                   "(model.pixel_level_module.* / model.transformer_module.*) Mask2Former keys")


def convert_component(state_dict: Mapping[str, Any], component: str, source: str = "auto",
                      prefix: str | None = None, template: Any = None,
                      dtype: Any = np.float32) -> tuple[dict[str, Any], ConversionReport]:
  """Converts one component (``"pixel_decoder"`` or ``"predictor"``).

  Args:
    state_dict: PyTorch state dict (numpy arrays or CPU tensors).
    component: ``"pixel_decoder"`` or ``"predictor"``.
    source: ``"official"``, ``"hf"`` or ``"auto"`` (from the keys).
    prefix: overrides the main prefix (e.g. a VITA checkpoint nested differently); the HF class
      head prefix ``class_predictor.`` is kept.
    template: optional parameter tree of the target module (arrays or ShapeDtypeStructs,
      optionally wrapped in ``{"params": ...}``) to check completeness and shapes against.
    dtype: floating dtype of the returned arrays (None keeps the source dtype).

  Returns:
    ``(params, report)``.
  """
  if component not in _COMPONENTS:
    raise ValueError(f"component {component!r} not in {sorted(_COMPONENTS)}")
  source = detect_source(state_dict) if source == "auto" else source
  if source not in SOURCES:
    raise ValueError(f"source {source!r} not in {SOURCES}")
  groups = list(_COMPONENTS[component][source])
  if prefix is not None:
    groups[0] = (prefix, groups[0][1])

  report = ConversionReport()
  flat: dict[str, np.ndarray] = {}
  for key in sorted(state_dict):
    group = next(((p, r) for p, r in groups if key.startswith(p)), None)
    if group is None:
      continue
    pfx, rules = group
    value = _to_numpy(state_dict[key])
    if dtype is not None and np.issubdtype(value.dtype, np.floating):
      value = value.astype(dtype)
    hit = _match(rules, key[len(pfx):])
    pairs = None
    if hit is not None:
      base, how = hit
      if how is None:
        pairs = [(base, value)]
      else:
        converted = _convert_param(*how, value)
        pairs = None if converted is None else [(f"{base}/{leaf}", arr)
                                                for leaf, arr in converted]
    if pairs is None:
      report.unexpected.append(key)
      continue
    for path, arr in pairs:
      flat[path] = arr
      report.mapped[path] = key

  if template is not None:
    shapes = _template_shapes(template)
    for path in list(flat):
      if path not in shapes:
        report.unexpected.append(f"{report.mapped.pop(path)} -> {path}")
        del flat[path]
      elif tuple(flat[path].shape) != shapes[path]:
        report.shape_mismatch.append((path, report.mapped.pop(path), shapes[path],
                                      tuple(flat[path].shape)))
        del flat[path]
    mismatched = {p for p, *_ in report.shape_mismatch}
    report.missing = sorted(p for p in shapes if p not in flat and p not in mismatched)
  return traverse_util.unflatten_dict(flat, sep="/"), report


def convert_pixel_decoder(state_dict: Mapping[str, Any], source: str = "auto", **kwargs: Any
                          ) -> tuple[dict[str, Any], ConversionReport]:
  """``MSDeformAttnPixelDecoder`` params; see ``convert_component`` for the arguments."""
  return convert_component(state_dict, "pixel_decoder", source, **kwargs)


def convert_transformer_decoder(state_dict: Mapping[str, Any], source: str = "auto",
                                **kwargs: Any) -> tuple[dict[str, Any], ConversionReport]:
  """``MultiScaleMaskedTransformerDecoder`` params; see ``convert_component``."""
  return convert_component(state_dict, "predictor", source, **kwargs)


def convert_mask2former_heads(state_dict: Mapping[str, Any], source: str = "auto",
                              templates: Mapping[str, Any] | None = None,
                              dtype: Any = np.float32
                              ) -> tuple[dict[str, Any], ConversionReport]:
  """Both heads: ``({"pixel_decoder": ..., "predictor": ...}, report)``.

  Args:
    state_dict: a full Mask2Former / M2F-VIS / VITA (official) or HF state dict; keys of other
      parts (backbone, VITA module, criterion buffers) are ignored.
    source: ``"official"``, ``"hf"`` or ``"auto"``.
    templates: optional ``{"pixel_decoder": tree, "predictor": tree}``.
    dtype: floating dtype of the returned arrays.

  Returns:
    ``(params, report)``; report paths are prefixed with the component name.
  """
  source = detect_source(state_dict) if source == "auto" else source
  templates = templates or {}
  params, report = {}, ConversionReport()
  for component in ("pixel_decoder", "predictor"):
    params[component], rep = convert_component(state_dict, component, source,
                                               template=templates.get(component), dtype=dtype)
    report = report.merge(rep.prefixed(component))
  return params, report
