"""A tiny Mask2Former on frames of the synthetic dataset: trains a few steps on a CPU.

Same architecture family as ``mask2former_r50_coco.py`` at toy widths (ResNet-50 layout with one
block per stage and narrow channels, 32-wide pixel decoder with 2 encoder layers, 3 decoder
layers, 16 queries, 1024 points), image mode (``T = 1`` clips). Variant: ``:smoke``.
"""

from configs import common, datasets
from vis_jax.models import mask2former_model


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  c = common.base_config()
  datasets.apply(c, "synthetic")
  c.model_name = "mask2former"
  c.model = mask2former_model.default_config()
  c.model.backbone = common.ConfigDict(dict(
      name="resnet50", num_blocks=(1, 1, 1, 1), stem_out_channels=16, res2_out_channels=32,
      width_per_group=8))
  c.model.pixel_decoder.conv_dim = 32
  c.model.pixel_decoder.mask_dim = 32
  c.model.pixel_decoder.num_encoder_layers = 2
  c.model.pixel_decoder.num_heads = 4
  c.model.pixel_decoder.dim_feedforward = 64
  c.model.pixel_decoder.num_groups = 8
  c.model.decoder.hidden_dim = 32
  c.model.decoder.num_heads = 4
  c.model.decoder.dim_feedforward = 64
  c.model.decoder.dec_layers = 3
  c.model.decoder.num_queries = 16
  c.loss.num_points = 1024

  c.input.num_frames = 1
  c.input.sampling_frame_range = 0
  c.input.min_size_train = (96, 128)
  c.input.max_size_train = 160
  c.input.crop.enabled = False
  c.input.size_buckets = ((128, 160), (160, 128), (160, 160))
  c.input.max_instances = 8
  c.batch_size = 4
  c.num_train_steps = 200
  c.checkpoint_every_steps = 50
  c.optim.learning_rate = 1e-4
  c.optim.clip_grad_norm = 0.01
  c.optim.decay_steps = ()
  if args.smoke:
    common.apply_smoke(c)
    c.input.num_frames = 1
  return c
