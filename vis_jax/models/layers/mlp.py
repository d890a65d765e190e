"""The DETR-style MLP head and PyTorch's default ``nn.Linear`` initialisation.

The official heads (Mask2Former ``mask_embed``, VITA, IFC, VisTR box/mask heads) are a stack of
``nn.Linear`` with ReLU between them, initialised by PyTorch's defaults; the initialisers here
reproduce those defaults so that training from scratch starts from the same distribution.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform_(a=√5) on a [out, in] weight is U(±1/√fan_in), i.e. variance 1/(3·fan_in).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """``nn.Linear``'s default bias: U(±1/√fan_in) (depends on the input width, unlike Flax's)."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(features: int, fan_in: int, name: str | None = None, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32,
                 kernel_init: nn.initializers.Initializer = torch_linear_kernel_init) -> nn.Dense:
  """A ``Dense`` initialised like a default ``nn.Linear(fan_in, features)``.

  ``name`` must stay None inside ``setup`` (Flax names those from the attribute).
  """
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=kernel_init, bias_init=torch_linear_bias_init(fan_in))


class MLP(nn.Module):
  """``num_layers`` Linear layers with ReLU between them (none after the last).

  Submodules are ``layers_0 .. layers_{n-1}``, matching the official ``MLP.layers.{i}``.

  Attributes:
    hidden_dim: width of every layer but the last.
    output_dim: width of the last layer.
    num_layers: number of Linear layers.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[..., C_in] -> [..., output_dim]``."""
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = torch_linear(self.output_dim if last else self.hidden_dim, x.shape[-1], f"layers_{i}",
                       self.dtype, self.param_dtype)(x)
      if not last:
        x = nn.relu(x)
    return x
