"""Config system: variants, command-line overrides, locking, validation messages."""

import glob
import importlib
import os

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every module with a get_config() (shared pieces such as small_detector.py have none).
CONFIG_FILES = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if "\ndef get_config(" in open(p).read())


def _parse(argv: list[str]):
  """Parses argv exactly as vis_jax.main does (locked config file flag)."""
  fv = flags.FlagValues()
  full_argv = ["prog", *argv]
  holder = config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                           sys_argv=full_argv)
  fv(full_argv)
  return holder.value


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("variant", ["", ":smoke"])
def test_every_config_loads_validates_and_is_locked(path, variant):
  config = _parse([f"--config={path}{variant}"])
  common.validate(config)
  assert config.is_locked
  with pytest.raises(AttributeError):
    config.new_key = 1


def test_variant_argument_changes_values():
  base = _parse([f"--config={REPO}/configs/vita_r50_ytvis19.py"])
  smoke = _parse([f"--config={REPO}/configs/vita_r50_ytvis19.py:smoke"])
  no_coco = _parse([f"--config={REPO}/configs/vita_r50_ytvis19.py:no_coco"])
  assert base.batch_size == 8 and smoke.batch_size == 2
  assert base.input.num_frames == 5 and base.input.sampling_frame_range == 20
  assert set(base.data.sources) == {"coco", "ytvis19"}
  assert set(no_coco.data.sources) == {"ytvis19"}
  # Official mixing weights (spec §3.6): COCO 1.0, YTVIS19 0.75.
  assert base.data.sources.coco.ratio == 1.0 and base.data.sources.ytvis19.ratio == 0.75


def test_command_line_overrides_nested_keys():
  config = _parse([
      f"--config={REPO}/configs/vita_r50_ytvis19.py:smoke",
      "--config.input.num_frames=7",
      "--config.data.sources.coco.ratio=0",
      "--config.input.crop.prob=0.25",
      "--config.data.on_bad_sample=skip",
  ])
  assert config.input.num_frames == 7
  assert config.input.crop.prob == 0.25
  assert config.data.on_bad_sample == "skip"
  assert list(common.active_sources(config)) == ["ytvis19"]


def test_unknown_override_key_is_an_error_naming_it():
  with pytest.raises(AttributeError, match="Did you mean \"num_frames\""):
    _parse([f"--config={REPO}/configs/vita_synthetic.py", "--config.input.num_framez=3"])


def test_wrong_type_override_is_an_error():
  with pytest.raises(flags.IllegalFlagValueError, match="num_frames"):
    _parse([f"--config={REPO}/configs/vita_synthetic.py", "--config.input.num_frames=abc"])


@pytest.mark.parametrize("override,key", [
    ("--config.input.num_frames=0", "input.num_frames"),
    ("--config.data.on_bad_sample=ignore", "data.on_bad_sample"),
    ("--config.data.sources.synthetic.ratio=0", "data.sources"),
    ("--config.data.sources.synthetic.kind=mp4", "data.sources.synthetic.kind"),
    ("--config.input.flip_prob=1.5", "input.flip_prob"),
])
def test_validation_names_the_bad_key(override, key):
  config = _parse([f"--config={REPO}/configs/vita_synthetic.py", override])
  with pytest.raises(common.ConfigError, match=f"config.{key}"):
    common.validate(config)


def test_bad_size_bucket_named():
  config = common.base_config()
  config.data.sources.x = common.source("ytvis", "a.json", "frames")
  config.input.size_buckets = ((500, 768),)
  with pytest.raises(common.ConfigError, match=r"config\.input\.size_buckets.*\(500, 768\)"):
    common.validate(config)


def test_get_config_calls_do_not_share_state():
  module = importlib.import_module("configs.vita_synthetic")
  a, b = module.get_config(), module.get_config()
  a.batch_size = 123
  a.input.min_size_train = (1,)
  assert b.batch_size != 123 and b.input.min_size_train != (1,)


def test_parse_arg():
  parsed = common.parse_arg("smoke,frames=3", smoke=False, frames=5, name="x")
  assert parsed.smoke is True and parsed.frames == 3 and parsed.name == "x"
  with pytest.raises(ValueError, match="'bogus' is unknown"):
    common.parse_arg("bogus", smoke=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("frames", frames=5)


def test_synthetic_paths_resolve_against_root(tmp_path):
  config = importlib.import_module("configs.vita_synthetic").get_config()
  config.data.synthetic.root = str(tmp_path)
  paths = common.resolve_paths(config)
  assert paths["synthetic"]["json"] == os.path.join(str(tmp_path), "train.json")
  assert paths["__eval__"]["frames"] == os.path.join(str(tmp_path), "valid", "JPEGImages")


@pytest.mark.parametrize("name,steps,decay,top_k,queries,test_size,frames", [
    ("vita_r50_ytvis19", 140_000, (75_000,), 10, 100, 360, 5),
    ("vita_r50_ytvis21", 187_500, (100_000,), 10, 100, 360, 6),
    ("vita_r50_ovis", 150_000, (50_000, 125_000), 20, 100, 360, 6),
    ("vita_swinl_ytvis19", 140_000, (75_000,), 10, 200, 448, 5),
    ("vita_swinl_ovis", 150_000, (50_000, 125_000), 20, 200, 448, 6),
    ("vita_r50_coco", 368_750, (327_778, 355_092), 100, 100, 360, 1),
])
def test_official_vita_configs_follow_the_spec_table(name, steps, decay, top_k, queries,
                                                     test_size, frames):
  """Spec §3.7 values; ``:paper`` swaps the layer counts to the paper's 3 / 6."""
  config = _parse([f"--config={REPO}/configs/{name}.py"])
  paper = _parse([f"--config={REPO}/configs/{name}.py:paper"])
  assert config.model_name == "vita"
  assert (config.num_train_steps, tuple(config.optim.decay_steps)) == (steps, decay)
  assert config.model.inference.top_k == top_k
  assert config.model.decoder.num_queries == queries and config.model.decoder.dec_layers == 9
  assert config.input.min_size_test == test_size and config.input.num_frames == frames
  vita = config.model.vita
  assert (vita.enc_layers, vita.dec_layers, vita.num_object_queries) == (6, 3, 100)
  assert vita.enc_window_size == (0 if name.endswith("coco") else 6)
  assert (paper.model.vita.enc_layers, paper.model.vita.dec_layers) == (3, 6)
  lr = 1e-4 if name.endswith("coco") else 5e-5
  assert config.optim.learning_rate == lr and config.optim.clip_grad_norm == 0.01
  assert config.batch_size == (16 if name.endswith("coco") else 8)


def test_official_vita_r50_builds_with_official_sizes():
  """Abstract parameters (nothing allocated) of the R50 YTVIS-2019 model: detector + VITA with
  the official widths (256 hidden, 2048 FFN, 100 video queries)."""
  import jax

  from vis_jax import convert

  config = convert.load_config(f"{REPO}/configs/vita_r50_ytvis19.py")
  params, _ = convert.abstract_variables(config)
  vita = params["vita"]
  assert vita["query_feat_embed"]["embedding"].shape == (100, 256)
  assert vita["fq_pos_embed"]["embedding"].shape == (100, 256)
  assert vita["enc_ffn_5"]["linear1"]["kernel"].shape == (256, 2048)
  assert "enc_ffn_6" not in vita and "transformer_ffn_layers_2" in vita
  assert vita["class_embed"]["kernel"].shape == (256, 41)
  assert 40e6 < sum(x.size for x in jax.tree_util.tree_leaves(params)) < 80e6
