"""Mesh construction and shardings on 8 simulated CPU devices (run in a subprocess)."""

import os
import subprocess
import sys
import textwrap

import pytest

from vis_jax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mesh_shape_fills_minus_one_and_rejects_bad_axes():
  assert parallel.mesh_shape((("data", -1), ("fsdp", 2), ("model", 1)), 8) == (
      ("data", "fsdp", "model"), (4, 2, 1))
  with pytest.raises(ValueError, match="at most one axis"):
    parallel.mesh_shape((("data", -1), ("fsdp", -1)), 8)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.mesh_shape((("data", -1), ("fsdp", 3)), 8)
  with pytest.raises(ValueError, match="need 4 devices, 8 are available"):
    parallel.mesh_shape((("data", 2), ("fsdp", 2)), 8)


def test_shardings_on_eight_devices():
  script = textwrap.dedent("""
      import numpy as np, jax
      from jax.sharding import PartitionSpec as P
      from vis_jax import parallel
      assert jax.device_count() == 8
      mesh = parallel.create_mesh((("data", -1), ("fsdp", 2), ("model", 1)))
      assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
      params = {"backbone": {"kernel": jax.ShapeDtypeStruct((3, 3, 16, 6), np.float32)},
                "head": {"bias": jax.ShapeDtypeStruct((5,), np.float32),
                         "kernel": jax.ShapeDtypeStruct((6, 10), np.float32)}}
      specs = parallel.param_partition_specs(
          params, mesh, ((r"^head/bias", "replicate"), (".*", "fsdp")))
      # Largest dimension divisible by the fsdp size (2) is sharded; 5 is not divisible.
      assert specs["backbone"]["kernel"] == P(None, None, "fsdp", None), specs
      assert specs["head"]["kernel"] == P(None, "fsdp"), specs
      assert specs["head"]["bias"] == P(), specs
      x = jax.device_put(np.zeros((6, 10), np.float32),
                         parallel.shardings_for(specs, mesh)["head"]["kernel"])
      assert {s.data.shape for s in x.addressable_shards} == {(6, 5)}
      batch = parallel.global_batch({"images": np.arange(16 * 3).reshape(16, 3)}, mesh,
                                    ("data", "fsdp"))
      shards = batch["images"].addressable_shards
      assert len(shards) == 8 and {s.data.shape for s in shards} == {(2, 3)}
      np.testing.assert_array_equal(np.asarray(batch["images"]), np.arange(48).reshape(16, 3))
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
