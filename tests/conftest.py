"""Shared test setup: generated data goes to a throw-away cache, never the user's."""

import os
import tempfile

os.environ.setdefault("VIS_JAX_CACHE", tempfile.mkdtemp(prefix="vis_jax_test_cache_"))
