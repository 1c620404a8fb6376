"""orbax checkpoints of the evolution state (latents, embeddings, sparseness, birth generations,
PRNG key, generation counter) plus the resolved config as JSON.

Model parameters are not part of a checkpoint: they come from the config (``rave``/``vggish``).
A corrupt or partial latest checkpoint falls back to the previous one with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import orbax.checkpoint as ocp

from lvns_jax.errors import LvnsError
from lvns_jax.search import SearchState

log = logging.getLogger("lvns_jax")


def abstract_arrays(state_like: SearchState) -> dict:
    """Shapes/dtypes/shardings of the checkpointed arrays, to restore into (so a checkpoint written on
    any number of devices or hosts restores onto the template's devices)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state_like.evolution_arrays())


class Checkpoints:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: SearchState, wait: bool = True) -> None:
        gen = int(state.generation)
        if gen in self.manager.all_steps():
            return
        self.manager.save(gen, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state.evolution_arrays()),
            config=ocp.args.JsonSave(dataclasses.asdict(state.config))))
        if wait:
            self.manager.wait_until_finished()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, template: SearchState) -> SearchState:
        """Restore the newest readable checkpoint into ``template``'s structure (models/config kept)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise LvnsError(f"no checkpoint found in {self.directory}")
        abstract = abstract_arrays(template)
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

    def close(self) -> None:
        self.manager.close()
