"""Run configuration: one frozen, validated dataclass.

Sources, in order: defaults < TOML file (stdlib ``tomllib``) or original LVNS-RAVE ``.gin`` file
< ``key=value`` overrides. Every problem is a :class:`~lvns_jax.errors.ConfigError` whose one-line
message names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from typing import Any, get_type_hints

from lvns_jax.errors import ConfigError

# Allowed values of the string options (the first one is the default).
CHOICES: dict[str, tuple[str, ...]] = {
    "init": ("uniform", "normal", "dataset"),
    "crossover": ("shared", "per_child"),
    "mutation": ("add", "replace", "gradient"),
    "mutation_distribution": ("normal", "uniform"),
    "sparseness_rule": ("nearest", "farthest"),
    "gradient_optimizer": ("adam", "sgd"),
    "frontend_precision": ("auto", "float64", "float32"),
    "precision": ("float32", "bfloat16", "default"),
}

# Keys naming a plug-in (lvns_jax.plugins): their allowed values are the registered names, checked by
# lvns_jax.assemble.check (the plug-ins' own keys are checked by their builders there).
PLUGIN_KEYS: dict[str, str] = {"emitter": "emitter", "selection": "selector", "knn": "scorer", "archive": "archive"}

# Model specs that need no weight files.
BUILTIN_RAVE = ("untrained:v1", "untrained:v2", "untrained:v2_small", "toy")

# Legacy keys still read (with a one-line note): old key -> function(value) -> {new key: value}
LEGACY_KEYS = {
    "vggish": lambda v: {"embedder": {"untrained": "untrained:vggish"}.get(v, v)},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs. Field comments are the documentation of each key."""

    # --- run ---
    seed: int = 0  # master PRNG seed: the whole run is a pure function of it
    generations: int = 10  # number of generations to run (in total, counting resumed ones)
    # --- population ---
    container_size: int = 50  # N: individuals kept after each selection
    breed_size: int = 30  # B: children made per generation (B <= N)
    latent_channels: int = 8  # C: user-facing latent size of the RAVE model
    latent_frames: int = 64  # T: latent frames per individual (audio = T * hop samples)
    init: str = "uniform"  # uniform = U[-1,1) (the original's "random"), normal = N(0,1), dataset
    dataset_path: str = ""  # init = "dataset": .npz of `lvns encode`, .npy (M, C, T'), or the original's .h5
    dataset_offset: int = 0  # first latent frame taken from each dataset item
    # --- variation ---
    emitter: str = "paper"  # paper (crossover + mutation) | gradient | mix (emitter_mix); a plug-in name
    emitter_mix: str = ""  # emitter = mix: shares, e.g. "gradient:0.25,paper" (one entry may omit its share)
    crossover: str = "shared"  # shared: one point per generation (original); per_child
    mutation: str = "add"  # add: z[:, t] += v; replace: z[:, t] = v
    mutation_distribution: str = "normal"  # v ~ N(0,1) or U[0,1), times mutation_scale
    mutation_scale: float = 1.0
    mutate_last_frame: bool = False  # the original never mutates frame T-1 (t in [0, T-2])
    # --- gradient-guided mutation (beyond the paper, lvns_jax.gradient) ---
    # mutation = "gradient": every child is its crossover + optax steps up the sparseness gradient;
    # mutation = add|replace with gradient_fraction > 0: that share of the children (mixed mode)
    gradient_fraction: float = 0.0  # in [0, 1]; round(fraction * breed_size) gradient children
    gradient_steps: int = 5  # optimiser steps per gradient child
    gradient_lr: float = 0.05  # optimiser learning rate (latent units)
    gradient_optimizer: str = "adam"  # adam | sgd
    gradient_prior_weight: float = 1.0  # weight of mean(relu(|z| - bound)^2); 0 = no penalty
    gradient_prior_bound: float = 3.0  # prior range in standard deviations of N(0, 1)
    # --- novelty and selection ---
    selection: str = "novelty"  # novelty (keep the N most sparse), random (control), replace (B = N)
    sparseness_rule: str = "nearest"  # nearest (paper) or farthest (what the original code computes)
    k: int = 30  # neighbours in the sparseness
    reevaluate_container: bool = False  # re-decode + re-embed the container every generation (original)
    # --- novelty archive (lvns_jax.archive) ---
    archive: str = "none"  # none | threshold (sparseness > threshold enters) | random (archive_rate share)
    archive_size: int = 1000  # most members held; when full the oldest are overwritten
    archive_threshold: float = 0.0  # threshold archive: entry threshold; 0 = median initial sparseness
    archive_rate: float = 0.0  # threshold: target insertions per generation / breed_size (0 = fixed); random: share
    # --- models ---
    rave: str = "untrained:v1"  # converted weights dir, or untrained:v1 | untrained:v2 | untrained:v2_small | toy
    embedder: str = "untrained:vggish"  # converted weights dir (vggish or panns), or untrained:vggish | untrained:panns | toy
    # matmul precision of the RAVE decoder's and the embedder's convolutions and dense layers
    # (lvns_jax.models.precision): float32 (float32 products, lax.Precision.HIGHEST, so TPU does not
    # silently multiply in bf16) | bfloat16 (bf16 operands, float32 accumulation; on XLA:CPU convs are
    # lowered to bf16 dots) | default (the backend's default precision). Front ends and kNN stay float32.
    precision: str = "float32"
    frontend_precision: str = "auto"  # VGGish front end: auto (float64 island where the backend has a float64 FFT, float32 on TPU) | float64 | float32
    noise: bool = True  # RAVE noise (latent completion + noise branch); false = deterministic decoder
    chunk_size: int = 32  # individuals per decode/embed batch inside the step (bounds memory)
    knn_chunk: int = 0  # pool rows per kNN block; 0 = automatic (~6.5M distances per block, >= 64 rows)
    # --- scale-out (lvns_jax.knn_incremental, lvns_jax.distributed) ---
    knn: str = "brute"  # brute: all pool distances each generation; incremental: children vs pool only (same survivors)
    knn_width: int = 0  # incremental: neighbours kept per member (>= k); 0 = 2k (4k from 20,000 members); k = recompute on any loss
    knn_approx: float = 0.0  # 0 = exact; in (0, 1): recall target of an approximate kNN screen (lax.approx_max_k, TPU)
    devices: int = 0  # population-axis shards: 0 = all devices (largest count dividing container_size and breed_size)
    multihost: bool = False  # call jax.distributed.initialize() first (TPU pod slice, several GPU hosts)
    # --- outputs ---
    scan_length: int = 10  # generations per compiled lax.scan block between host-side logging
    checkpoint_every: int = 10  # generations between orbax checkpoints (0 = only at the end)
    keep_checkpoints: int = 3
    save_every: int = 10  # generations between WAV + latent dumps of the container (0 = never)
    audio_every: int = 10  # generations between TensorBoard audio of the most novel (0 = never)
    audio_count: int = 4  # individuals in each TensorBoard audio summary
    progress: bool = True  # progress bar on the console
    report: bool = True  # write RUN_DIR/report.html at the end of a run (`lvns report`: listening page)

    # ------------------------------------------------------------------ helpers
    @property
    def pool_size(self) -> int:
        return self.container_size + self.breed_size

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**dataclasses.asdict(self), **_legacy(changes)})

    def to_toml(self) -> str:
        lines = ["# lvns-jax resolved configuration"]
        for f in dataclasses.fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"


_TYPES = get_type_hints(Config)
_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def _coerce(key: str, value: Any) -> Any:
    """Check/convert one value to the field's type; strings from the command line are parsed."""
    want = _TYPES[key]
    if isinstance(value, str) and want is not str:
        text = value.strip()
        try:
            if want is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            return want(text)
        except ValueError:
            raise ConfigError(f"{key}: expected {want.__name__}, got {value!r}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_key(key: str) -> None:
    if key not in _FIELDS:
        close = [f for f in _FIELDS if f.split("_")[0] == key.split("_")[0] or key in f]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}; allowed keys: {', '.join(_FIELDS)}")


def _is_builtin(spec: str, builtins: tuple[str, ...]) -> bool:
    return spec in builtins


def validate(cfg: Config) -> Config:
    """Raise ConfigError for impossible values; return cfg unchanged otherwise."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg} (got {getattr(cfg, key)!r})")

    need(cfg.generations >= 0, "generations", "must be >= 0")
    need(cfg.container_size >= 2, "container_size", "must be >= 2")
    need(cfg.breed_size >= 1, "breed_size", "must be >= 1")
    need(cfg.breed_size <= cfg.container_size, "breed_size",
         f"must be <= container_size = {cfg.container_size} (parents are drawn without replacement)")
    need(cfg.latent_channels >= 1, "latent_channels", "must be >= 1")
    need(cfg.latent_frames >= 4, "latent_frames", "must be >= 4 (crossover point is drawn in [1, T-3])")
    need(cfg.k >= 1, "k", "must be >= 1")
    need(cfg.k < cfg.pool_size, "k",
         f"must be < pool size container_size + breed_size = {cfg.pool_size}")
    need(cfg.mutation_scale >= 0, "mutation_scale", "must be >= 0")
    _validate_gradient(cfg, need)
    need(cfg.dataset_offset >= 0, "dataset_offset", "must be >= 0")
    need(cfg.chunk_size >= 1, "chunk_size", "must be >= 1")
    need(cfg.knn_chunk >= 0, "knn_chunk", "must be >= 0 (0 = automatic)")
    _validate_scale_out(cfg, need)
    need(cfg.scan_length >= 1, "scan_length", "must be >= 1")
    for key in ("checkpoint_every", "save_every", "audio_every"):
        need(getattr(cfg, key) >= 0, key, "must be >= 0 (0 = never)")
    need(cfg.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
    need(cfg.audio_count >= 1, "audio_count", "must be >= 1")
    need(not cfg.emitter_mix or cfg.emitter == "mix", "emitter_mix", "is read only with emitter = mix")
    need(cfg.archive_size >= 1, "archive_size", "must be >= 1")
    need(cfg.archive_threshold >= 0, "archive_threshold", "must be >= 0 (0 = median initial sparseness)")
    need(0.0 <= cfg.archive_rate <= 1.0, "archive_rate", "must be in [0, 1]")
    if cfg.init == "dataset":
        need(bool(cfg.dataset_path), "dataset_path", "init = dataset needs a latent file (.npz/.npy/.h5)")
        need(os.path.isfile(cfg.dataset_path), "dataset_path", "file not found")
    if not _is_builtin(cfg.rave, BUILTIN_RAVE) and not os.path.isdir(cfg.rave):
        if cfg.rave.endswith(".ts") and os.path.isfile(cfg.rave):
            raise ConfigError(
                f"rave: {cfg.rave!r} is a TorchScript export; convert it first: "
                f"lvns convert rave {cfg.rave} --out weights/NAME, then rave=weights/NAME")
        raise ConfigError(f"rave: weights directory {cfg.rave!r} not found; allowed: a directory made by "
                          f"`lvns convert rave`, or one of {', '.join(BUILTIN_RAVE)}")
    if cfg.embedder != "toy" and not cfg.embedder.startswith("untrained:") and not os.path.isdir(cfg.embedder):
        raise ConfigError(f"embedder: weights directory {cfg.embedder!r} not found; allowed: a directory made by "
                          f"`lvns convert vggish|panns`, toy, untrained:vggish or untrained:panns")
    return cfg


def _validate_gradient(cfg: Config, need) -> None:
    """Keys of the gradient-guided mutation (lvns_jax.gradient)."""
    need(0.0 <= cfg.gradient_fraction <= 1.0, "gradient_fraction", "must be in [0, 1]")
    if cfg.mutation == "gradient":
        need(cfg.gradient_fraction in (0.0, 1.0), "gradient_fraction",
             "mutation = gradient makes every child a gradient child; for a mixed mode use "
             "mutation = add|replace with gradient_fraction in (0, 1]")
    elif cfg.gradient_fraction > 0:
        need(cfg.gradient_fraction * cfg.breed_size >= 0.5, "gradient_fraction",
             f"rounds to 0 gradient children of breed_size = {cfg.breed_size}")
    need(cfg.gradient_steps >= 1, "gradient_steps", "must be >= 1")
    need(cfg.gradient_lr > 0, "gradient_lr", "must be > 0")
    need(cfg.gradient_prior_weight >= 0, "gradient_prior_weight", "must be >= 0 (0 = no penalty)")
    need(cfg.gradient_prior_bound > 0, "gradient_prior_bound", "must be > 0")


def _validate_scale_out(cfg: Config, need) -> None:
    """Keys of the incremental kNN and of the population sharding (issue 6)."""
    need(cfg.knn_width == 0 or cfg.knn_width >= cfg.k, "knn_width", f"must be 0 (automatic: 2k, 4k from 20,000 members) or >= k = {cfg.k}")
    need(0.0 <= cfg.knn_approx < 1.0, "knn_approx", "must be in [0, 1) (0 = exact)")
    need(cfg.devices >= 0, "devices", "must be >= 0 (0 = all devices)")


def _legacy(values: dict[str, Any]) -> dict[str, Any]:
    """Old keys (``vggish``) rewritten to their new names, with a one-line note each."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in LEGACY_KEYS:
            new = LEGACY_KEYS[key](value)
            import logging

            logging.getLogger("lvns_jax").info("config: %s = %r is read as %s (the old key still works)", key, value,
                                               ", ".join(f"{k} = {v!r}" for k, v in new.items()))
            out.update(new)
        else:
            out[key] = value
    return out


def from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """Build and validate a Config from a flat ``{key: value}`` mapping over ``base`` (defaults)."""
    merged = dataclasses.asdict(base or Config())
    for key, value in _legacy(values).items():
        _check_key(key)
        merged[key] = _coerce(key, value)
    return validate(Config(**merged))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["k=50", "mutation=replace"]`` -> ``{"k": 50, "mutation": "replace"}`` (typed)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in LEGACY_KEYS:
            out[key] = value.strip()
            continue
        _check_key(key)
        out[key] = _coerce(key, value)
    return _legacy(out)


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: tables are not used; write [{key}] keys at top level")
    return data


# ----------------------------------------------------------------------------- .gin (original)
# Binding of the original LVNS-RAVE configs -> our key (None: accepted and ignored, with reason).
_GIN_MAP: dict[str, str | None] = {
    "EPrior.num_iteration": "generations",
    "EPrior.save_output_per_n_iteration": "save_every",
    "EPrior.random_seed": "seed",
    "EPrior.output_path": None,  # use --out
    "EPrior.device": None,  # JAX picks the device
    "EPrior.sample_rate": None,  # taken from the RAVE model
    "EPrior.rave.path": "rave",
    "EPrior.rave.latent_dim": "latent_dim",
    "EPrior.rave.version": None,  # output layout is handled by the converter
    "EPrior.classifier.type": "classifier",
    "EPrior.container.init_method": "init",
    "EPrior.container.dataset_path": "dataset_path",
    "EPrior.container.offset": "dataset_offset",
    "EPrior.container.size": "container_size",
    "EPrior.mutation.new_breed_size": "breed_size",
    "EPrior.mutation.method": "mutation",
    "EPrior.mutation.distribution": "mutation_distribution",
    "EPrior.selection.method": "selection",
    "EPrior.selection.knn_n_neighbors": "k",
}


def _gin_literal(text: str, where: str) -> Any:
    import ast

    text = text.split("#", 1)[0].strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"{where}: cannot read value {text!r}") from None


def read_gin(path: str) -> dict[str, Any]:
    """Read the bindings of an original LVNS-RAVE ``.gin`` config into our keys.

    Both gin forms are read: ``Scope.param = value`` lines and ``Scope:`` blocks with
    indented ``param = value`` lines (the form of the original's configs). The original's
    semantics are kept: sparseness_rule = farthest and reevaluate_container = true
    (override them on the command line if you want the paper's definition).
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    bindings: dict[str, Any] = {}
    scope = None
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        where = f"{os.path.basename(path)}:{n}"
        m = re.fullmatch(r"([A-Za-z_][\w.]*)\s*:", line.strip())
        if m and not raw[0].isspace():
            scope = m.group(1)
            continue
        if "=" not in line:
            raise ConfigError(f"{where}: cannot parse {raw.strip()!r}")
        name, value = (s.strip() for s in line.split("=", 1))
        full = f"{scope}.{name}" if raw[0].isspace() and scope else name
        bindings[full] = _gin_literal(value, where)

    out: dict[str, Any] = {"sparseness_rule": "farthest", "reevaluate_container": True}
    unsupported = [b for b in bindings if b not in _GIN_MAP]
    if unsupported:
        raise ConfigError(f"{path}: unsupported gin bindings: {', '.join(unsupported)}; "
                          f"supported: {', '.join(_GIN_MAP)}")
    for binding, value in bindings.items():
        key = _GIN_MAP[binding]
        if key is None:
            continue
        if key == "latent_dim":
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ConfigError(f"{binding}: expected (channels, frames), got {value!r}")
            out["latent_channels"], out["latent_frames"] = int(value[0]), int(value[1])
        elif key == "classifier":
            if value != "vggish":
                raise ConfigError(f"{binding}: only 'vggish' is supported, got {value!r}")
        elif key == "init":
            out["init"] = {"random": "uniform"}.get(value, value)
        elif key == "selection":
            if value != "novelty":
                raise ConfigError(f"{binding}: only 'novelty' is supported from .gin "
                                  f"('concat' grows the container, which a static-shape step cannot); got {value!r}")
            out["selection"] = "novelty"
        else:
            out[key] = value
    return out


def load(path: str | None = None, overrides: list[str] | dict[str, Any] | None = None,
         base: Config | None = None) -> Config:
    """Resolve a Config from an optional TOML/.gin file and ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path:
        values.update(read_gin(path) if path.endswith(".gin") else read_toml(path))
    if overrides:
        values.update(parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return from_dict(values, base=base)
