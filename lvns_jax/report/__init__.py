"""``lvns report RUN_DIR``: one self-contained HTML page that explores a run.

The page (``RUN_DIR/report.html`` by default) holds, with inline CSS/JS and no network access:

* the sparseness curves vs generation (container mean, min-max band, median; children mean/max)
  from ``metrics.jsonl``, drawn as inline SVG;
* a 2-D map of the container's embeddings for every shown saved generation, drawn on a canvas.
  One PCA basis is fitted (NumPy, :func:`lvns_jax.plot.pca_2d`) on the union of the shown
  generations, so all generations share the axes. Points are coloured by sparseness or by birth
  generation (``born.npy``, when the run saved it); hover shows index / sparseness / born, click plays
  the sound and highlights its k nearest neighbours (computed here in embedding space, over the
  whole container of that generation, with ``k = min(config k, 10)``), listed with players;
* the "most novel" list: top 10 by sparseness of the last shown generation, with players and
  download links;
* the run's ``config.toml``, and at the top the UNTRAINED warning when the models were untrained or
  toy.

Audio: by default the page *references* the WAV files already in ``RUN_DIR/audio`` by relative paths
from the page's own folder (nothing is copied; keep the page and the run's ``audio/`` folder
together). ``embed_audio=True`` (``--embed-audio``) puts every WAV of the shown generations into the
page as base64 instead (one portable file; meant for small runs, refused above
:data:`EMBED_LIMIT_BYTES`).

Large containers: at most ``max_points`` (2,000) points per generation are drawn, an even spread
over the sparseness ranking (the page says so); the kNN lists and the top-10 still use every member.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import tomllib
import urllib.parse
from importlib import resources

import numpy as np

from lvns_jax.errors import LvnsError
from lvns_jax.logs import read_metrics
from lvns_jax.plot import pca_2d

KNN_CAP = 10  #: at most this many neighbours are stored per point
TOP_N = 10  #: length of the "most novel" list
MAX_POINTS = 2000  #: points drawn per generation before subsampling
MAX_AUTO_GENERATIONS = 12  #: generations shown when --generations is not given
EMBED_LIMIT_BYTES = 50 * 1024 * 1024  #: --embed-audio refuses more WAV bytes than this
CURVE_KEYS = ("sparseness_mean", "sparseness_min", "sparseness_max", "sparseness_median",
              "children_sparseness_mean", "children_sparseness_max")
UNTRAINED_MARK = "UNTRAINED MODELS:"


# ------------------------------------------------------------------ small pure helpers (unit-tested)
def parse_generations(text: str | None) -> list[int | str] | None:
    """``--generations``: ``None`` -> automatic; ``"0,10,last"`` -> ``[0, 10, "last"]`` (``first`` too)."""
    if text is None:
        return None
    out: list[int | str] = []
    for tok in (t.strip().lower() for t in text.split(",")):
        if not tok:
            continue
        if tok in ("last", "first"):
            out.append(tok)
            continue
        try:
            g = int(tok)
        except ValueError:
            raise LvnsError(f"--generations: expected comma-separated generations like 0,10,last, got {text!r}") \
                from None
        if g < 0:
            raise LvnsError(f"--generations: generation {g} is negative")
        out.append(g)
    if not out:
        raise LvnsError("--generations: no generation given")
    return out


def select_generations(saved: list[int], wanted: list[int | str] | None,
                       max_auto: int = MAX_AUTO_GENERATIONS) -> list[int]:
    """The saved generations to show, sorted and without duplicates. ``wanted=None``: all saved ones,
    or ``max_auto`` evenly spaced ones (first and last included) when there are more."""
    saved = sorted(saved)
    if wanted is None:
        if len(saved) <= max_auto:
            return saved
        idx = np.unique(np.round(np.linspace(0, len(saved) - 1, max_auto)).astype(int))
        return [saved[i] for i in idx]
    if not saved:
        raise LvnsError("--generations: this run saved no generation (save_every = 0?)")
    gens = set()
    missing = []
    for w in wanted:
        g = saved[-1] if w == "last" else saved[0] if w == "first" else w
        (gens.add(g) if g in saved else missing.append(g))
    if missing:
        raise LvnsError(f"--generations: generation(s) {', '.join(map(str, missing))} not saved; "
                        f"saved: {', '.join(map(str, saved))}")
    return sorted(gens)


def knn_lists(embeddings: np.ndarray, k: int, queries: np.ndarray | None = None,
              block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest OTHER members (Euclidean, embedding space) of each query row.

    ``embeddings`` (N, D); ``queries``: member indices (default all). Returns (indices (Q, k) int,
    distances (Q, k)), nearest first, ties by index; members with non-finite embeddings are nobody's
    neighbour (and have no neighbours: index -1, distance inf). ``k`` is capped at N - 1.
    """
    x = np.asarray(embeddings, np.float64)
    n = x.shape[0]
    q = np.arange(n) if queries is None else np.asarray(queries, int)
    k = max(0, min(int(k), n - 1))
    ok = np.all(np.isfinite(x), axis=1)
    xs = np.where(ok[:, None], x, 0.0)
    sq = np.sum(xs * xs, axis=1)
    idx = np.full((len(q), k), -1, int)
    dist = np.full((len(q), k), np.inf)
    if k == 0:
        return idx, dist
    for s in range(0, len(q), block):
        rows = q[s:s + block]
        d2 = sq[rows, None] + sq[None, :] - 2.0 * xs[rows] @ xs.T
        d2 = np.maximum(d2, 0.0)
        d2[:, ~ok] = np.inf
        d2[np.arange(len(rows)), rows] = np.inf  # not its own neighbour
        d2[~ok[rows]] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n else np.argsort(d2, axis=1)[:, :k]
        # exact distances of the candidates, then a stable (distance, index) order
        cand_d = np.sqrt(np.sum((xs[rows][:, None, :] - xs[part]) ** 2, axis=-1))
        cand_d[~np.isfinite(np.take_along_axis(d2, part, axis=1))] = np.inf
        order = np.lexsort((part, cand_d), axis=1)
        idx[s:s + block] = np.take_along_axis(part, order, axis=1)
        dist[s:s + block] = np.take_along_axis(cand_d, order, axis=1)
    idx[~np.isfinite(dist)] = -1
    return idx, dist


def top_novel(sparseness: np.ndarray, n: int = TOP_N) -> np.ndarray:
    """Indices of the ``n`` most sparse members, most sparse first (ties: lower index first; NaN last)."""
    sp = np.asarray(sparseness, np.float64)
    key = np.where(np.isnan(sp), -np.inf, sp)
    return np.argsort(-key, kind="stable")[:n]


def subsample(sparseness: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Member indices to draw: all of them, or ``max_points`` spread evenly over the sparseness
    ranking (the most sparse one always included), returned in increasing index order."""
    n = len(sparseness)
    if n <= max_points:
        return np.arange(n)
    ranking = top_novel(sparseness, n)
    pick = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))
    return np.sort(ranking[pick])


def _num(x, digits: int = 6):
    """JSON-safe float with ``digits`` significant digits (None when not finite)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _nums(a, digits: int = 6) -> list:
    return [_num(v, digits) for v in np.asarray(a, np.float64).ravel()]


# ------------------------------------------------------------------ the run directory
@dataclasses.dataclass
class Generation:
    generation: int
    folder: str
    sparseness: np.ndarray
    embeddings: np.ndarray | None
    born: np.ndarray | None
    wavs: list[str | None]  # absolute path of each member's WAV, None if missing


def saved_generations(run_dir: str) -> dict[int, str]:
    """``{generation: folder}`` of the ``audio/gen_XXXX`` folders holding ``sparseness.npy``."""
    root = os.path.join(run_dir, "audio")
    out = {}
    if os.path.isdir(root):
        for name in os.listdir(root):
            m = re.fullmatch(r"gen_(\d+)", name)
            if m and os.path.isfile(os.path.join(root, name, "sparseness.npy")):
                out[int(m.group(1))] = os.path.join(root, name)
    return dict(sorted(out.items()))


def load_generation(g: int, folder: str) -> Generation:
    sp = np.load(os.path.join(folder, "sparseness.npy")).astype(np.float64).ravel()
    n = len(sp)

    def opt(name):
        p = os.path.join(folder, name)
        return np.load(p) if os.path.isfile(p) else None

    emb, born = opt("embeddings.npy"), opt("born.npy")
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != n):
        raise LvnsError(f"{folder}: embeddings.npy has shape {emb.shape}, expected ({n}, D)")
    if born is not None:
        born = born.ravel()
        if born.shape[0] != n:
            raise LvnsError(f"{folder}: born.npy has {born.shape[0]} entries for {n} members")
    wavs = [os.path.join(folder, f"{i:03d}.wav") for i in range(n)]
    wavs = [w if os.path.isfile(w) else None for w in wavs]
    return Generation(g, folder, sp, emb, born, wavs)


def untrained_notice(run_dir: str, cfg: dict) -> str | None:
    """The run's UNTRAINED notice: the line ``lvns run`` logged, else what the config's ``rave`` /
    ``embedder`` keys say (``toy``, ``untrained...``, or a weights dir whose meta.json has trained=false)."""
    log = os.path.join(run_dir, "run.log")
    if os.path.isfile(log):
        with open(log, errors="replace") as f:
            for line in f:
                if UNTRAINED_MARK in line:
                    return line[line.index(UNTRAINED_MARK):].strip()
    bad = []
    keys = [("rave", "untrained:v1"), ("embedder" if "embedder" in cfg or "vggish" not in cfg else "vggish",
                                         "untrained:vggish")]  # (runs of older versions saved `vggish`)
    for key, default in keys:
        spec = str(cfg.get(key, default))
        if spec == "toy" or spec.startswith("untrained"):
            bad.append(f"{key} = {spec!r}")
            continue
        meta = os.path.join(spec, "meta.json")
        if os.path.isfile(meta):
            try:
                with open(meta) as f:
                    if not json.load(f).get("trained", True):
                        bad.append(f"{key} = {spec!r} (meta.json: trained = false)")
            except (OSError, ValueError):
                pass
    if not bad:
        return None
    return (f"{UNTRAINED_MARK} {'; '.join(bad)}. Sounds and novelty scores are not meaningful; "
            "see weights/README.md to convert real weights.")


def _audio_ref(wav: str, out_dir: str) -> str:
    """URL of ``wav`` relative to the page's folder (percent-encoded), or a file:// URI."""
    try:
        rel = os.path.relpath(os.path.abspath(wav), os.path.abspath(out_dir))
    except ValueError:  # another drive (Windows)
        from pathlib import Path

        return Path(os.path.abspath(wav)).as_uri()
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def _data_uri(wav: str) -> str:
    with open(wav, "rb") as f:
        return "data:audio/wav;base64," + base64.b64encode(f.read()).decode("ascii")


# ------------------------------------------------------------------ page data
def build_data(run_dir: str, out_path: str, generations: list[int | str] | None = None, *,
               embed_audio: bool = False, max_points: int = MAX_POINTS) -> dict:
    """Everything the page shows, as a JSON-able dict (see the template for how it is used)."""
    cfg_path = os.path.join(run_dir, "config.toml")
    met_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isdir(run_dir):
        raise LvnsError(f"{run_dir}: no such directory")
    if not os.path.isfile(cfg_path) and not os.path.isfile(met_path):
        raise LvnsError(f"{run_dir}: not a run directory (no config.toml or metrics.jsonl; make one with `lvns run`)")
    config_text, cfg = "", {}
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            config_text = f.read()
        try:
            cfg = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError as e:
            raise LvnsError(f"{cfg_path}: not valid TOML ({e})") from None
    records = []
    if os.path.isfile(met_path):
        try:
            records = sorted(read_metrics(met_path), key=lambda r: r["generation"])
        except (ValueError, KeyError) as e:
            raise LvnsError(f"{met_path}: unreadable metrics ({type(e).__name__}: {e})") from None
    curves = {"generation": [int(r["generation"]) for r in records]}
    for key in CURVE_KEYS:
        if any(r.get(key) is not None for r in records):
            curves[key] = [_num(r[key]) if r.get(key) is not None else None for r in records]

    saved = saved_generations(run_dir)
    shown = select_generations(list(saved), generations)
    gens = [load_generation(g, saved[g]) for g in shown]
    k = min(int(cfg.get("k", 30)), KNN_CAP)
    out_dir = os.path.dirname(os.path.abspath(out_path))

    if embed_audio:
        total = sum(os.path.getsize(w) for gd in gens for w in gd.wavs if w)
        if total > EMBED_LIMIT_BYTES:
            raise LvnsError(f"--embed-audio: {total / 2**20:.0f} MB of WAVs in the shown generations (limit "
                            f"{EMBED_LIMIT_BYTES // 2**20} MB); leave it out to reference the files, or pick "
                            "fewer --generations")

    # one PCA basis over the drawn members of every shown generation
    drawn = {gd.generation: subsample(gd.sparseness, max_points) for gd in gens}
    with_emb = [gd for gd in gens if gd.embeddings is not None]
    proj, ratio = {}, []
    if with_emb:
        stack = np.concatenate([gd.embeddings[drawn[gd.generation]] for gd in with_emb])
        ok_rows = np.all(np.isfinite(stack), axis=1)
        if ok_rows.sum() >= 2:
            if stack.shape[1] >= 2:
                p, _, r = pca_2d(stack)
            else:  # 1-D embeddings: the one axis, and zeros
                p = np.zeros((len(stack), 2)); p[:, 0] = stack[:, 0] - np.nanmean(stack[ok_rows, 0])
                r = np.array([1.0, 0.0])
            ratio = _nums(r, 4)
            start = 0
            for gd in with_emb:
                m = len(drawn[gd.generation])
                proj[gd.generation] = p[start:start + m]
                start += m

    gen_data = []
    for gd in gens:
        n = len(gd.sparseness)
        show = drawn[gd.generation]
        entry = {
            "generation": gd.generation,
            "size": n,
            "sparseness": _nums(gd.sparseness),
            "born": None if gd.born is None else [int(b) for b in gd.born],
            "audio": [None if w is None else (_data_uri(w) if embed_audio else _audio_ref(w, out_dir))
                      for w in gd.wavs],
            "wav_names": [os.path.basename(w) if w else None for w in gd.wavs],
            "missing_audio": sum(w is None for w in gd.wavs),
            "shown": [int(i) for i in show],
            "xy": None,
            "knn": None,
            "knn_dist": None,
            "top": [int(i) for i in top_novel(gd.sparseness)],
        }
        if gd.generation in proj:
            entry["xy"] = [[_num(a, 5), _num(b, 5)] for a, b in proj[gd.generation]]
            idx, dist = knn_lists(gd.embeddings, k, queries=show)
            entry["knn"] = idx.tolist()
            entry["knn_dist"] = [_nums(row, 5) for row in dist]
        gen_data.append(entry)

    return {
        "title": os.path.basename(os.path.normpath(os.path.abspath(run_dir))),
        "run_dir": os.path.abspath(run_dir),
        "config_text": config_text,
        "untrained": untrained_notice(run_dir, cfg),
        "k": k,
        "k_config": cfg.get("k"),
        "max_points": max_points,
        "curves": curves,
        "saved_generations": list(saved),
        "generations": gen_data,
        "pca_ratio": ratio,
        "audio_mode": "embedded" if embed_audio else "relative",
        "audio_base": None if embed_audio else _audio_ref(os.path.join(run_dir, "audio"), out_dir),
    }


def render(data: dict) -> str:
    """The HTML page for ``data`` (the template with the data inlined as JSON)."""
    template = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c")  # valid JSON that cannot close the <script> element or open a comment
    page = template.replace("__LVNS_TITLE__", _html_escape(data["title"]))
    return page.replace("__LVNS_DATA__", blob)


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def write_report(run_dir: str, out: str | None = None, generations: list[int | str] | None = None, *,
                 embed_audio: bool = False, max_points: int = MAX_POINTS) -> tuple[str, dict]:
    """Write the page; returns (path, data). ``out`` defaults to ``RUN_DIR/report.html``."""
    out = out or os.path.join(run_dir, "report.html")
    if os.path.isdir(out):
        out = os.path.join(out, "report.html")
    data = build_data(run_dir, out, generations, embed_audio=embed_audio, max_points=max_points)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(render(data))
    return out, data


def summary(out: str, data: dict) -> str:
    """The console lines of ``lvns report``."""
    gens = data["generations"]
    lines = [f"wrote {out}"]
    if not gens:
        lines.append("  no saved generations (save_every = 0?): the page has the curves only, no audio")
    else:
        if data["audio_mode"] == "embedded":
            audio = "audio embedded in the page (base64)"
        else:
            audio = (f"audio: the run's WAV files, linked relative to the page ({data['audio_base']}/gen_XXXX/NNN.wav); "
                     "move the page together with the run's audio folder")
        lines.append(f"  generations {', '.join(str(g['generation']) for g in gens)}; {audio}")
        sub = [g for g in gens if len(g["shown"]) < g["size"]]
        if sub:
            lines.append(f"  containers above {data['max_points']} members are subsampled on the map")
    if data["untrained"]:
        lines.append("  " + data["untrained"])
    return "\n".join(lines)
