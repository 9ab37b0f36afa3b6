"""Hypothesis profiles of the property suite (tests/test_properties*.py), picked by the
environment variable FACTORKERN_HYPOTHESIS_PROFILE:

- ``ci`` (default): a fixed seed (derandomized, no example database), few examples per property:
  the suite's share of CI stays under ~2.5 minutes on 2 cores.
- ``dev``: random seeds and many more examples, for local runs (several minutes; failures are
  remembered in .hypothesis/ and replayed first).
- ``gpu``: as ``dev`` with a fixed seed, for a GPU machine where the Triton and CUDA kernels run
  natively (bf16 included).

``FACTORKERN_HYPOTHESIS_PROFILE=dev python -m pytest -q tests/test_properties.py
tests/test_properties_formats.py``; docs/index.md says the same.
"""

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile("ci", max_examples=6, derandomize=True, database=None,
                          deadline=None, print_blob=True, suppress_health_check=_SLOW_OK)
settings.register_profile("dev", max_examples=150, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("gpu", max_examples=60, derandomize=True, database=None,
                          deadline=None, print_blob=True, suppress_health_check=_SLOW_OK)

PROFILE = os.environ.get("FACTORKERN_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """Examples for one property: ``ci`` under the ci profile, the profile's count otherwise
    (cheap properties ask for more than the default in CI)."""
    return ci if PROFILE == "ci" else settings().max_examples
