"""orbax checkpoints of the evolution state (latents, embeddings, sparseness, birth generations,
PRNG key, generation counter) plus the resolved config as JSON.

Model parameters are not part of a checkpoint: they come from the config (``rave``/``vggish``).
A corrupt or partial latest checkpoint falls back to the previous one with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import orbax.checkpoint as ocp

from lvns_jax import storage
from lvns_jax.errors import LvnsError
from lvns_jax.search import STATE_FORMAT, SearchState

log = logging.getLogger("lvns_jax")


def abstract_arrays(state_like: SearchState) -> dict:
    """Shapes/dtypes/shardings of the checkpointed arrays, to restore into (so a checkpoint written on
    any number of devices or hosts restores onto the template's devices)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state_like.evolution_arrays())


def one_line_cause(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` of the innermost cause of ``e`` (orbax/tensorstore chain and wrap errors), one line."""
    seen = []
    while e is not None and e not in seen and len(seen) < 20:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(seen):  # innermost first; an OSError's strerror names the cause best
        if isinstance(err, OSError) and err.strerror:
            where = f" ({err.filename})" if err.filename else ""
            return f"{err.strerror}{where}"[:limit]
    inner = seen[-1]
    text = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {text}"[:limit]


def step_dirs(directory: str) -> list[int]:
    """Generations with a checkpoint directory in ``directory`` (read from the listing, nothing created)."""
    if storage.is_remote(directory):  # gs://: the listing's digit names (no directories there)
        return sorted(int(n) for n in storage.listdir(directory) if n.isdigit()) if storage.isdir(directory) else []
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def saved_config(directory: str) -> tuple[int, dict] | None:
    """``(generation, config dict)`` of the newest checkpoint in ``directory`` whose saved config reads,
    or None when there is none. Reads the JSON orbax wrote; writes nothing (safe before any check)."""
    for step in reversed(step_dirs(directory)):
        path = os.path.join(directory, str(step), "config", "metadata")
        try:
            with storage.open(path) as f:
                values = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(values, dict):
            return step, values
    return None


class Checkpoints:
    """The run's checkpoints. ``config``: the resolved configuration (a dict), saved with every
    checkpoint together with the state layout version (``_state_format``)."""

    def __init__(self, directory: str, keep: int = 3, config: dict | None = None):
        self.config = dict(config or {})
        self.directory = storage.abspath(directory)  # gs://BUCKET/...: orbax writes there itself (epath + tensorstore)
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        except Exception as e:  # permission denied, a file in the way, ...
            raise LvnsError(f"cannot open the checkpoint directory {self.directory}: {one_line_cause(e)}") from e

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: SearchState, wait: bool = True) -> None:
        gen = int(state.generation)
        if gen in self.manager.all_steps():
            return
        try:
            self.manager.save(gen, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state.evolution_arrays()),
                config=ocp.args.JsonSave({**self.config, "_state_format": STATE_FORMAT})))
            if wait:
                self.manager.wait_until_finished()
        except Exception as e:  # orbax/tensorstore raise many types (disk full, permissions, ...)
            raise LvnsError(f"cannot write checkpoint {gen} in {self.directory}: {one_line_cause(e)} "
                            f"(earlier checkpoints are intact: {step_dirs(self.directory) or 'none'})") from e

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise LvnsError(f"cannot write a checkpoint in {self.directory}: {one_line_cause(e)}") from e

    def restore_latest(self, template: SearchState) -> SearchState:
        """Restore the newest readable checkpoint into ``template``'s structure (models/config kept)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise LvnsError(f"no checkpoint found in {self.directory}")
        abstract = abstract_arrays(template)
        self._check_format(steps[0])
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))
                arrays = restored["state"]
                if int(arrays["generation"]) != step:
                    raise ValueError(f"generation {int(arrays['generation'])} != step {step}")
                return template.replace(**arrays)
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                log.warning("checkpoint %d in %s is unreadable (%s: %s); falling back to the previous one",
                            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        raise LvnsError(f"no readable checkpoint in {self.directory} (tried steps {steps})")

    def _check_format(self, step: int) -> None:
        """Refuse, in one line, a checkpoint whose state layout this version does not read."""
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception:  # unreadable: restore_latest falls back to an older checkpoint
            return
        found = saved.get("_state_format", 1) if isinstance(saved, dict) else 1
        if found != STATE_FORMAT:
            raise LvnsError(f"checkpoint {step} in {self.directory} holds state format {found}, this lvns-jax "
                            f"reads format {STATE_FORMAT} (it was written by an older version, before identity "
                            f"keys and archives); start a new run with another --out")

    def close(self) -> None:
        self.manager.close()
