"""The CPU-sized Mask2Former frame detector shared by the synthetic configs.

ResNet-50 layout at toy widths with trainable GroupNorm (no pretrained weights exist for it),
a 64-wide pixel decoder and a 64-wide masked-attention decoder with 16 queries.
"""

from configs import common


def small_detector_config(pixel_encoder_layers: int, decoder_layers: int) -> common.ConfigDict:
  """``config.model`` for the small detector (``mask2former_model.default_config()`` keys)."""
  from vis_jax.models import mask2former_model  # local: light config import

  model = mask2former_model.default_config()
  model.backbone = common.ConfigDict(dict(
      name="resnet50", num_blocks=(1, 1, 1, 1), stem_out_channels=24, res2_out_channels=64,
      width_per_group=16, norm="GN", norm_groups=8))
  pd = model.pixel_decoder
  pd.conv_dim, pd.mask_dim, pd.num_encoder_layers = 64, 64, pixel_encoder_layers
  pd.num_heads, pd.dim_feedforward, pd.num_groups = 4, 128, 8
  dec = model.decoder
  dec.hidden_dim, dec.num_heads, dec.dim_feedforward = 64, 4, 128
  dec.dec_layers, dec.num_queries = decoder_layers, 16
  return model
