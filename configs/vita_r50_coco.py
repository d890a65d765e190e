"""VITA, ResNet-50, COCO: the official pretraining of the whole VITA on images (spec §3.7).

``configs/mask2former_r50_coco.py`` (data, T = 1 inputs, batch 16, lr 1e-4, 368,750 steps with
×0.1 at 327,778 and 355,092, and its LSJ deviation) with the VITA module on top: official VITA
layers with a global encoder window (W = 0), as the official ``configs/coco/vita_*`` files.
The video configs start from this model (``--config.init_from``). COCO has no video evaluation
here, so only ``--mode=train`` applies. Variants: ``:smoke`` (tiny sizes, 10 steps), ``:paper``.
"""

from configs import common, mask2former_r50_coco


def get_config(arg: str | None = None) -> common.ConfigDict:
  from vis_jax.models import vita, vita_model  # local: light import

  args = common.parse_arg(arg, smoke=False, paper=False)
  c = mask2former_r50_coco.get_config("smoke" if args.smoke else None)
  c.model_name = "vita"
  layers = dict(enc_layers=3, dec_layers=6) if args.paper else {}
  c.model.vita = vita.default_config(enc_window_size=0, **layers)
  c.model.inference = vita_model.default_inference_config()
  c.model.inference.top_k = 100
  return c
