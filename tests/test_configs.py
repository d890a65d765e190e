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
    ("--config.model.decoder.mask_piloting=True", "model.decoder.mask_piloting"),
    ("--config.model.decoder.peak_prior_template=1", "model.decoder.peak_prior_template"),
    ("--config.model.vita.peak_prior_template=-2", "model.vita.peak_prior_template"),
    ("--config.loss.centre_offset_weight=10", "loss.centre_offset_weight"),
    ("--config.model.vita.peak_prior_votes=True", "model.vita.peak_prior_votes"),
    ("--config.model.decoder.centre_offset_width=32", "model.decoder.centre_offset_width"),
])
def test_validation_names_the_bad_key(override, key):
  config = _parse([f"--config={REPO}/configs/vita_synthetic.py", override])
  with pytest.raises(common.ConfigError, match=f"config.{key}"):
    common.validate(config)


@pytest.mark.parametrize("overrides, key", [
    (["--config.model.decoder.peak_prior_votes=True", "--config.model.decoder.peak_prior=False"],
     "model.decoder.peak_prior_votes"),
    (["--config.loss.centre_offset_weight=10"], "loss.centre_offset_weight"),
])
def test_centre_votes_validation(overrides, key):
  """The votes need the peak prior, and their loss needs the votes; both together are valid."""
  config = _parse([f"--config={REPO}/configs/m2f_vis_synthetic.py", *overrides])
  with pytest.raises(common.ConfigError, match=f"config.{key}"):
    common.validate(config)
  common.validate(_parse([f"--config={REPO}/configs/m2f_vis_synthetic.py",
                          "--config.model.decoder.peak_prior_votes=True",
                          "--config.loss.centre_offset_weight=10"]))


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


def test_smoke_data_never_replaces_the_default_dataset():
  # ensure_dataset replaces a root generated with other parameters: the smoke variant's tiny
  # dataset must live elsewhere than the full default one, but keep a root the user chose.
  full = importlib.import_module("configs.vita_synthetic").get_config()
  smoke = importlib.import_module("configs.vita_synthetic").get_config("smoke")
  assert full.data.synthetic.root == os.path.join(common.default_cache_dir(), "synthetic")
  assert smoke.data.synthetic.root == os.path.join(common.default_cache_dir(), "synthetic_smoke")
  chosen = common.base_config()
  chosen.data.synthetic.root = "/data/my_synthetic"
  assert common.apply_smoke(chosen).data.synthetic.root == "/data/my_synthetic"


_R50, _SWINL = ("resnet50", 100, 360), ("swin_large", 200, 448)   # backbone, queries, test size
_SPEC_TABLE = [   # name, detector, steps, lr steps, top-k, (T, R)
    ("vita_r50_ytvis19", _R50, 140_000, (75_000,), 10, (5, 20)),
    ("vita_r50_ytvis21", _R50, 187_500, (100_000,), 10, (6, 8)),
    ("vita_r50_ovis", _R50, 150_000, (50_000, 125_000), 20, (6, 8)),
    ("vita_swinl_ytvis19", _SWINL, 140_000, (75_000,), 10, (5, 20)),
    ("vita_swinl_ytvis21", _SWINL, 187_500, (100_000,), 10, (6, 8)),
    ("vita_swinl_ovis", _SWINL, 150_000, (50_000, 125_000), 20, (6, 8)),
    ("vita_r50_coco", _R50, 368_750, (327_778, 355_092), 100, (1, 0)),
]


@pytest.mark.parametrize("name,detector,steps,decay,top_k,frames_range", _SPEC_TABLE,
                         ids=[row[0] for row in _SPEC_TABLE])
def test_official_vita_configs_follow_the_spec_table(name, detector, steps, decay, top_k,
                                                     frames_range):
  """Spec §3.7 values; ``:paper`` swaps the layer counts to the paper's 3 / 6."""
  config = _parse([f"--config={REPO}/configs/{name}.py"])
  paper = _parse([f"--config={REPO}/configs/{name}.py:paper"])
  smoke = _parse([f"--config={REPO}/configs/{name}.py:smoke"])
  coco = name.endswith("coco")
  # :smoke shrinks inputs and steps only (the model stays the official one).
  assert (smoke.batch_size, smoke.num_train_steps) == (2, 10)
  assert smoke.model.to_dict() == config.model.to_dict()
  assert max(smoke.input.pseudo.min_size_train) <= max(max(b) for b in smoke.input.size_buckets)
  assert config.model_name == "vita"
  backbone, queries, test_size = detector
  assert config.model.backbone.name == backbone and config.model.decoder.num_queries == queries
  assert config.model.decoder.dec_layers == 9 and config.model.decoder.hidden_dim == 256
  assert (config.num_train_steps, tuple(config.optim.decay_steps)) == (steps, decay)
  assert config.model.inference.top_k == top_k and config.model.inference.chunk_size == 18
  assert (config.input.num_frames, config.input.sampling_frame_range) == frames_range
  if not coco:
    assert config.input.min_size_test == test_size
  vita = config.model.vita
  assert (vita.enc_layers, vita.dec_layers, vita.num_object_queries) == (6, 3, 100)
  assert vita.last_layer_num == 3 and vita.sim_use_clip and not vita.freeze_detector
  assert vita.enc_window_size == (0 if coco else 6)
  assert (paper.model.vita.enc_layers, paper.model.vita.dec_layers) == (3, 6)
  assert paper.model.vita.enc_window_size == vita.enc_window_size   # only the layer counts
  assert config.optim.learning_rate == (1e-4 if coco else 5e-5)
  assert (config.optim.weight_decay, config.optim.backbone_multiplier) == (0.05, 0.1)
  assert config.optim.clip_grad_norm == 0.01 and config.optim.warmup_factor == 1.0
  assert config.batch_size == (16 if coco else 8)
  if coco:
    assert set(config.data.sources) == {"coco"} and config.data.num_classes == 80
  else:
    assert set(config.data.sources) == {"coco", name.split("_")[-1]}
    assert config.data.sources.coco.category_map == f"coco_to_{name.split('_')[-1]}"


@pytest.mark.parametrize("name,classes,frames", [("vita_r50_ytvis19", 40, 5),
                                                 ("vita_r50_coco", 80, 1)])
def test_official_vita_r50_builds_with_official_sizes(name, classes, frames):
  """Abstract parameters (nothing allocated) of the R50 models: detector + VITA with the
  official widths (256 hidden, 2048 FFN, 100 frame and 100 video queries, 6 + 3 layers)."""
  import jax

  from vis_jax import convert

  config = convert.load_config(f"{REPO}/configs/{name}.py")
  assert convert.dummy_batch(config, ["images"])["images"].shape[1] == frames
  params, state = convert.abstract_variables(config)
  vita, predictor = params["vita"], params["detector"]["predictor"]
  assert vita["query_feat_embed"]["embedding"].shape == (100, 256)
  assert vita["fq_pos_embed"]["embedding"].shape == (100, 256)
  assert vita["enc_ffn_5"]["linear1"]["kernel"].shape == (256, 2048)
  assert "enc_ffn_6" not in vita and "transformer_ffn_layers_2" in vita
  assert "transformer_ffn_layers_3" not in vita
  assert vita["class_embed"]["kernel"].shape == (256, classes + 1)
  assert predictor["class_embed"]["kernel"].shape == (256, classes + 1)
  assert "frozen_bn" in state   # official ResNet: FrozenBN statistics are model state
  assert 40e6 < sum(x.size for x in jax.tree_util.tree_leaves(params)) < 80e6
