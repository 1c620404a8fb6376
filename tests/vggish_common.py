"""Shared helpers for the VGGish tests: the torchvggish reference fixture and synthetic weights."""

from __future__ import annotations

import functools
import os
import sys

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REFERENCE = os.path.join(FIXTURES, "vggish_reference.npz")
REF_PYTHON = os.environ.get("LVNS_REF_PYTHON", "/work/refvenv/bin/python")

if FIXTURES not in sys.path:
    sys.path.insert(0, FIXTURES)
import vggish_synth  # noqa: E402,F401


@functools.lru_cache(maxsize=1)
def reference() -> dict:
    """The fixture made by ``tests/fixtures/make_vggish_reference.py`` with torchvggish."""
    with np.load(REFERENCE) as d:
        return {k: d[k] for k in d.files}


def names(rate: int | None = None, with_embedding: bool = True) -> list[str]:
    ref = reference()
    out = []
    for n in map(str, ref["names"]):
        if rate is not None and int(ref[f"sr/{n}"]) != rate:
            continue
        if with_embedding and f"emb/{n}" not in ref:
            continue
        out.append(n)
    return out


def audio(name: str) -> tuple[np.ndarray, int]:
    """float32 samples (int16 / 32768, as the reference got them) and the sample rate."""
    ref = reference()
    return ref[f"audio/{name}"].astype(np.float32) / np.float32(32768.0), int(ref[f"sr/{name}"])


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def save_torch_state_dict(path: str, sd: dict) -> None:
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
