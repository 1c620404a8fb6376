import gc
import os

import pytest

# Tests run on the CPU with deterministic, single-threaded-friendly settings.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _maps() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return -1


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    Every XLA:CPU executable keeps memory mappings for its code; one pytest process compiling the
    whole suite's thousands of functions approaches Linux's ``vm.max_map_count`` (65,530), and
    XLA's compiler then crashes (a segfault inside ``backend_compile_and_load``, seen late in full
    runs). Clearing the caches between modules keeps the count bounded.
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()
    if os.environ.get("LVNS_TEST_MAPS"):
        print(f"\n[memory maps after module: {_maps()}]")
