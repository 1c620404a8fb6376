"""``lvns plot``: sparseness curves of one or several runs, and a PCA view of the container.

* Curves (from each run's ``metrics.jsonl``): container mean sparseness vs generation with a
  min/max band, one colour per run, like the paper's figures. ``x="time"`` puts the cumulative
  compute time of the generation steps on the x axis (``step_seconds`` of the metrics: the compiled
  steps only, without compilation and host-side saving); ``x="both"`` draws both panels.
* PCA (from ``audio/gen_XXXX/embeddings.npy``, written every ``save_every`` generations): the
  container's embeddings at the chosen generations projected on the first two principal components
  of their union (one basis per run, so the generations of a run share axes).

matplotlib is an optional extra (``pip install 'lvns-jax[plot]'``); the figure is drawn with the
Agg canvas directly, so no display or global pyplot state is needed.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from lvns_jax import storage
from lvns_jax.errors import LvnsError
from lvns_jax.logs import read_metrics

X_AXES = ("generation", "time", "both")
MAX_AUTO_PCA = 4


@dataclasses.dataclass(frozen=True)
class RunCurves:
    """Per-generation container sparseness of one run (NaN where a value was not finite)."""

    label: str
    generation: np.ndarray  # (G,) int
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    seconds: np.ndarray  # (G,) cumulative step time, 0 at the first record


def _column(records: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], np.float64)


def load_curves(run_dir: str, label: str | None = None) -> RunCurves:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not storage.isfile(path):  # a local path or gs://BUCKET/RUN
        raise LvnsError(f"{run_dir}: no metrics.jsonl (not a run directory made by `lvns run`)")
    records = sorted(read_metrics(path), key=lambda r: r["generation"])
    if not records:
        raise LvnsError(f"{path} is empty")
    step = np.nan_to_num(_column(records, "step_seconds"))
    return RunCurves(
        label=label or storage.basename(run_dir),
        generation=np.array([int(r["generation"]) for r in records]),
        mean=_column(records, "sparseness_mean"), min=_column(records, "sparseness_min"),
        max=_column(records, "sparseness_max"), seconds=np.cumsum(step))


def _load_npy(path: str) -> np.ndarray:
    if not storage.is_remote(path):
        return np.load(path)
    import io

    with storage.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))


def saved_generations(run_dir: str) -> dict[int, str]:
    """``{generation: folder}`` of the ``audio/gen_XXXX`` folders that hold ``embeddings.npy``."""
    root = os.path.join(run_dir, "audio")
    out = {}
    if storage.isdir(root):
        for name in storage.listdir(root):
            m = re.fullmatch(r"gen_(\d+)", name)
            if m and storage.isfile(os.path.join(root, name, "embeddings.npy")):
                out[int(m.group(1))] = os.path.join(root, name)
    return dict(sorted(out.items()))


def pca_2d(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of the rows of ``x`` (n, D) from the eigendecomposition of their
    covariance. Returns (projection (n, m), components (m, D), explained variance ratio (m,)).
    Signs are fixed so that each component's largest-magnitude loading is positive. Non-finite rows
    are dropped from the fit and projected as NaN.
    """
    x = np.asarray(x, np.float64)
    ok = np.all(np.isfinite(x), axis=1)
    if ok.sum() < 2:
        raise LvnsError("PCA needs at least two finite embeddings")
    mean = x[ok].mean(axis=0)
    xc = x[ok] - mean
    cov = xc.T @ xc / (xc.shape[0] - 1)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(evals)[::-1][:n_components]
    comps = evecs[:, order].T
    signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    total = np.clip(evals, 0, None).sum()
    ratio = np.clip(evals[order], 0, None) / total if total > 0 else np.zeros(len(order))
    proj = np.full((x.shape[0], len(comps)), np.nan)
    proj[ok] = xc @ comps.T
    return proj, comps, ratio


def _choose_generations(run_dir: str, wanted: list[int] | None) -> dict[int, str]:
    saved = saved_generations(run_dir)
    if wanted is None:  # automatic: up to MAX_AUTO_PCA evenly spaced saved generations
        gens = list(saved)
        if len(gens) > MAX_AUTO_PCA:
            idx = np.unique(np.round(np.linspace(0, len(gens) - 1, MAX_AUTO_PCA)).astype(int))
            gens = [gens[i] for i in idx]
        return {g: saved[g] for g in gens}
    missing = [g for g in wanted if g not in saved]
    if missing:
        have = ", ".join(map(str, saved)) or "none (run with save_every > 0)"
        raise LvnsError(f"{run_dir}: no saved embeddings for generation(s) {', '.join(map(str, missing))}; "
                        f"saved: {have}")
    return {g: saved[g] for g in wanted}


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LvnsError("lvns plot needs matplotlib: pip install 'lvns-jax[plot]' (or pip install matplotlib)") \
            from None
    return Figure, FigureCanvasAgg


def plot_runs(run_dirs: list[str], out: str, *, x: str = "generation", pca_generations: list[int] | None = None,
              pca: bool = True, labels: list[str] | None = None, title: str | None = None) -> str:
    """Draw the figure for ``run_dirs`` into ``out`` (PNG, or any format matplotlib knows by the
    extension); returns ``out``. ``pca_generations=None`` picks up to 4 saved generations per run;
    ``pca=False`` draws the curves only."""
    if x not in X_AXES:
        raise LvnsError(f"--x: {x!r} is not one of {', '.join(X_AXES)}")
    if not run_dirs:
        raise LvnsError("give at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise LvnsError(f"--labels: {len(labels)} labels for {len(run_dirs)} runs")
    Figure, FigureCanvasAgg = _require_matplotlib()
    curves = [load_curves(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    pca_runs = []
    if pca:
        for d, c in zip(run_dirs, curves):
            gens = _choose_generations(d, pca_generations)
            if gens:
                pca_runs.append((c.label, gens))
        if pca_generations is not None and not pca_runs:
            raise LvnsError("no saved embeddings to project")

    axes_x = ["generation", "time"] if x == "both" else [x]
    ncols = max(len(axes_x), len(pca_runs), 1)
    nrows = 2 if pca_runs else 1
    fig = Figure(figsize=(5.0 * ncols, 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows, ncols)
    colours = [f"C{i % 10}" for i in range(len(curves))]
    span = ncols // len(axes_x)
    for j, axis in enumerate(axes_x):
        ax = fig.add_subplot(grid[0, j * span:(j + 1) * span] if j < len(axes_x) - 1 else grid[0, j * span:])
        for c, colour in zip(curves, colours):
            xs = c.generation if axis == "generation" else c.seconds
            ax.fill_between(xs, c.min, c.max, color=colour, alpha=0.15, linewidth=0)
            ax.plot(xs, c.mean, color=colour, label=c.label)
        ax.set_xlabel("generation" if axis == "generation" else "step time (s, cumulative)")
        ax.set_ylabel("container sparseness (mean, min-max band)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for j, (label, gens) in enumerate(pca_runs):
        ax = fig.add_subplot(grid[1, j])
        embs = [_load_npy(os.path.join(folder, "embeddings.npy")) for folder in gens.values()]
        proj, _, ratio = pca_2d(np.concatenate(embs))
        start = 0
        cmap_colours = [f"C{i % 10}" for i in range(len(gens))]
        for (g, _), e, colour in zip(gens.items(), embs, cmap_colours):
            p = proj[start:start + len(e)]
            start += len(e)
            ax.scatter(p[:, 0], p[:, 1], s=10, color=colour, alpha=0.7, label=f"gen {g}")
        ax.set_title(f"{label}: container embeddings (PCA)", fontsize="medium")
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var)" if len(ratio) > 1 else "PC2")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def parse_generations(text: str | None) -> tuple[bool, list[int] | None]:
    """``--pca-generations``: None -> (True, automatic); "none" -> (False, None); "0,10" -> (True, [0, 10])."""
    if text is None:
        return True, None
    if text.strip().lower() == "none":
        return False, None
    try:
        gens = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LvnsError(f"--pca-generations: expected comma-separated generations like 0,10,20 or none, "
                        f"got {text!r}") from None
    if not gens:
        raise LvnsError("--pca-generations: no generation given")
    return True, gens
