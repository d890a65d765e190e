"""Official VITA ``vita_module.*`` checkpoint weights → ``VITAModule`` parameters.

The key mapping (with transposes) is listed in ``vis_jax/models/vita.py``. The official state
dict (``vita_*.pth`` ``["model"]``, spec §7.1) holds the whole ``Vita`` model; only keys under
``prefix`` are read here, every other key is left to the backbone / Mask2Former converters
(``vita_criterion.empty_weight`` is a loss buffer and never a parameter).

``report`` lists ``missing`` (official keys the config expects but the state dict lacks),
``unexpected`` (keys under ``prefix`` that no rule consumed, e.g. an extra encoder layer) and,
when a ``template`` (``VITAModule.init`` params) is given, ``shape_mismatch`` and
``template_missing`` (template leaves the converter did not produce).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vis_jax.models.vita import config_value

Rule = tuple[str, Callable[[np.ndarray], dict[tuple[str, ...], np.ndarray]]]


# Key prefix of the VITA module in official checkpoints.
OFFICIAL_PREFIX = "vita_module."


def _np(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value, np.float32)


def _linear(path: tuple[str, ...]) -> list[Rule]:
  """``nn.Linear`` ``weight [out, in]`` / ``bias`` → ``Dense`` ``kernel [in, out]`` / ``bias``."""
  return [("weight", lambda w: {path + ("kernel",): w.T}),
          ("bias", lambda b: {path + ("bias",): b})]


def _norm(path: tuple[str, ...]) -> list[Rule]:
  return [("weight", lambda w: {path + ("scale",): w}),
          ("bias", lambda b: {path + ("bias",): b})]


def _mha(path: tuple[str, ...]) -> list[Rule]:
  """Packed ``in_proj_*`` rows (q; k; v) → three Denses; ``out_proj`` → Dense."""

  def split(arr, leaf, transpose):
    parts = np.split(arr, 3, axis=0)
    return {path + (f"{n}_proj", leaf): (p.T if transpose else p)
            for n, p in zip("qkv", parts, strict=True)}

  return [("in_proj_weight", lambda w: split(w, "kernel", True)),
          ("in_proj_bias", lambda b: split(b, "bias", False))] + [
              (f"out_proj.{k}", f) for k, f in _linear(path + ("out_proj",))]


def _prefixed(key: str, rules: list[Rule]) -> list[Rule]:
  return [(f"{key}.{k}", f) for k, f in rules]


def official_rules(cfg: Any) -> list[Rule]:
  """``(official key without prefix, converter)`` for every parameter the config implies."""
  rules: list[Rule] = []
  c = int(cfg.hidden_dim)
  in_channels = config_value(cfg, "in_channels") or c
  if in_channels != c or config_value(cfg, "enforce_input_proj"):
    rules += _prefixed("input_proj_dec", _linear(("input_proj_dec",)))
  for i in range(int(cfg.enc_layers)):
    rules += _prefixed(f"enc_self_attn.{i}.self_attn", _mha((f"enc_self_attn_{i}", "self_attn")))
    rules += _prefixed(f"enc_self_attn.{i}.norm", _norm((f"enc_self_attn_{i}", "norm")))
    for sub in ("linear1", "linear2"):
      rules += _prefixed(f"enc_ffn.{i}.{sub}", _linear((f"enc_ffn_{i}", sub)))
    rules += _prefixed(f"enc_ffn.{i}.norm", _norm((f"enc_ffn_{i}", "norm")))
  for i in range(int(cfg.dec_layers)):
    cross = f"transformer_cross_attention_layers_{i}"
    rules += _prefixed(f"transformer_cross_attention_layers.{i}.multihead_attn",
                       _mha((cross, "multihead_attn")))
    rules += _prefixed(f"transformer_cross_attention_layers.{i}.norm", _norm((cross, "norm")))
    selfa = f"transformer_self_attention_layers_{i}"
    rules += _prefixed(f"transformer_self_attention_layers.{i}.self_attn",
                       _mha((selfa, "self_attn")))
    rules += _prefixed(f"transformer_self_attention_layers.{i}.norm", _norm((selfa, "norm")))
    ffn = f"transformer_ffn_layers_{i}"
    for sub in ("linear1", "linear2"):
      rules += _prefixed(f"transformer_ffn_layers.{i}.{sub}", _linear((ffn, sub)))
    rules += _prefixed(f"transformer_ffn_layers.{i}.norm", _norm((ffn, "norm")))
  rules += [("vita_mask_features.weight",
             lambda w: {("vita_mask_features", "kernel"): w[:, :, 0, 0].T}),
            ("vita_mask_features.bias", lambda b: {("vita_mask_features", "bias"): b})]
  rules += _prefixed("decoder_norm", _norm(("decoder_norm",)))
  for official, ours in (("query_feat", "query_feat_embed"), ("query_embed", "query_embed"),
                         ("fq_pos", "fq_pos_embed")):
    rules.append((f"{official}.weight", lambda w, ours=ours: {(ours, "embedding"): w}))
  rules += _prefixed("class_embed", _linear(("class_embed",)))
  for j in range(3):
    rules += _prefixed(f"mask_embed.layers.{j}", _linear(("mask_embed", f"layers_{j}")))
  if config_value(cfg, "use_sim"):
    rules += _prefixed("sim_embed_frame", _linear(("sim_embed_frame",)))
    if config_value(cfg, "sim_use_clip"):
      rules += _prefixed("sim_embed_clip", _linear(("sim_embed_clip",)))
  return rules


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def vita_params_from_torch(state_dict: Mapping[str, Any], cfg: Any,
                           prefix: str = "vita_module.",
                           template: Mapping[str, Any] | None = None
                           ) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """Converts the official VITA module weights.

  Args:
    state_dict: name → array (numpy arrays or torch tensors), e.g. a checkpoint's ``"model"``.
    cfg: the VITA config the weights are for (layer counts, sim heads, input projection).
    prefix: the module's key prefix in ``state_dict`` (``""`` for a bare module state dict).
    template: optional ``VITAModule.init(...)["params"]`` (or the full variables) to check
      shapes and completeness against.

  Returns:
    ``(params, report)``: ``params`` is the nested ``{"params": ...}``-less parameter dict
    (numpy float32); ``report`` has ``missing``, ``unexpected`` and, with a template,
    ``shape_mismatch`` and ``template_missing`` (each a sorted list of names).
  """
  ours = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  flat: dict[tuple[str, ...], np.ndarray] = {}
  missing, used = [], set()
  for key, convert in official_rules(cfg):
    if key not in ours:
      missing.append(prefix + key)
      continue
    used.add(key)
    flat.update(convert(_np(ours[key])))
  report = {"missing": sorted(missing),
            "unexpected": sorted(prefix + k for k in set(ours) - used)}
  params: dict[str, Any] = {}
  for path, value in flat.items():
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  if template is not None:
    template = template.get("params", template)
    expected = {k: tuple(np.shape(v)) for k, v in _flatten(template).items()}
    report["shape_mismatch"] = sorted(
        f"{'/'.join(k)}: {flat[k].shape} vs {expected[k]}"
        for k in expected if k in flat and flat[k].shape != expected[k])
    report["template_missing"] = sorted("/".join(k) for k in expected if k not in flat)
    report["unexpected"] += sorted("/".join(k) for k in flat if k not in expected)
  return params, report
