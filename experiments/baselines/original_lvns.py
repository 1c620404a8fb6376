"""The ORIGINAL LVNS-RAVE generation loop, for the speed baseline of ``lvns bench``.

A faithful, dependency-light copy of ``EPrior`` in github fisheggg/LVNS-RAVE
(``eprior/eprior/core.py``): torch crossover + per-child Python-loop mutation, decoding through
the TorchScript ``.ts`` in batches of 64, VGGish one clip at a time with torchvggish's NumPy /
resampy front end (``waveform_to_examples``, what ``VGGish.forward(x, fs)`` of the torch.hub
model runs) and the examples averaged, and novelty selection that RE-DECODES AND RE-EMBEDS the
whole container every generation and computes sparseness in a Python loop
(``torch.topk(..., largest=True)``: the mean of the k farthest). Only gin, pytorch-lightning,
h5py and the file output are left out (none of them is in the timed path).

Runs in the reference venv (acids-rave is not needed, only torch, torchvggish, resampy)::

    refvenv/bin/python experiments/baselines/original_lvns.py \
        --ts weights/bench/v1.ts --vggish weights/bench/vggish.pth \
        --container 500 --breed 100 --k 50 --generations 2

Prints one JSON line: seconds of the init (decode + embed of the container, as the original's
``run`` does before the loop) and of every generation.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def vggish_model(path):
    from torchvggish import torchvggish as tv

    model = tv.VGG(tv.make_layers(), postprocess=False)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    model.eval()
    return model


class OriginalLVNS:
    def __init__(self, ts, vggish, container_size, breed_size, latent_dim, k, sample_rate, seed,
                 method="add", distribution="normal"):
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.rave = torch.jit.load(ts)
        self.vggish = vggish_model(vggish)
        self.container_size, self.breed_size, self.latent_dim = container_size, breed_size, latent_dim
        self.k, self.sample_rate = k, sample_rate
        self.method, self.distribution = method, distribution
        self.hop = 2048
        self.container = torch.rand(size=(container_size, *latent_dim)) * 2 - 1  # "random" init
        self.clock = {"breed_s": 0.0, "decode_s": 0.0, "embed_s": 0.0, "knn_s": 0.0}  # where the time goes

    # --- EPrior.mutate ---
    def _clocked(self, name, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.clock[name] += time.perf_counter() - t0
        return out

    def mutate(self):
        return self._clocked("breed_s", self._mutate)

    def _mutate(self):
        n, b, (c, t) = self.container_size, self.breed_size, self.latent_dim
        new_genes = torch.zeros(b, c, t)
        first_parent = torch.arange(n)[torch.randperm(n)][:b]
        crossover_point = torch.randint(low=1, high=t - 2, size=(1,))
        second_parent = torch.arange(n)[torch.randperm(n)][:b]
        new_genes[:, :, :crossover_point] = self.container[first_parent, :, :crossover_point]
        new_genes[:, :, crossover_point:] = self.container[second_parent, :, crossover_point:]
        for gene in new_genes:
            col_idx = torch.randint(low=0, high=t - 1, size=(1,))
            if self.distribution == "normal":
                new_component = torch.normal(mean=0.0, std=1.0, size=(c, 1))
            else:
                new_component = torch.rand(size=(c, 1))
            if self.method == "replace":
                gene[:, col_idx] = new_component
            else:
                gene[:, col_idx] += new_component
        return new_genes

    # --- EPrior.generate (V2 output layout: acids-rave 2.3.1 exports return (B, 1, S)) ---
    def generate(self, genes):
        return self._clocked("decode_s", self._generate, genes)

    def _generate(self, genes):
        with torch.no_grad():
            outputs = torch.zeros(genes.shape[0], 1, genes.shape[-1] * self.hop)
            for batch_idx, gene in enumerate(genes.split(64, dim=0)):
                start = batch_idx * 64
                outputs[start:start + gene.shape[0]] = self.rave.decode(gene)
        return outputs[:, 0, :]

    # --- EPrior.evaluate: one clip at a time, NumPy/resampy front end ---
    def evaluate(self, audios):
        return self._clocked("embed_s", self._evaluate, audios)

    def _evaluate(self, audios):
        from torchvggish import vggish_input

        embeddings = torch.zeros(audios.shape[0], 128)
        with torch.no_grad():
            for i, audio in enumerate(audios):
                examples = vggish_input.waveform_to_examples(audio.cpu().numpy(), self.sample_rate)
                embedding = self.vggish.forward(examples)
                embeddings[i] = embedding.mean(axis=0) if len(embedding.shape) > 1 else embedding
        return embeddings

    # --- EPrior.select("novelty") ---
    def select(self, new_genes, embeddings):
        all_embeddings = torch.concat([self.evaluate(self.generate(self.container)), embeddings], dim=0)
        all_genes = torch.concat([self.container, new_genes], dim=0)
        t0 = time.perf_counter()
        mean_distances = torch.zeros(all_embeddings.shape[0])
        for i, embedding in enumerate(all_embeddings):
            dist = torch.norm(all_embeddings - embedding, dim=1)
            mean_distances[i] = torch.topk(dist, self.k, largest=True).values.mean()
        self.container = all_genes[torch.topk(mean_distances, self.container_size, largest=True).indices]
        self.clock["knn_s"] += time.perf_counter() - t0
        return mean_distances

    def generation(self):
        new_genes = self.mutate()
        output = self.generate(new_genes)
        embeddings = self.evaluate(output)
        return self.select(new_genes, embeddings)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ts", required=True)
    p.add_argument("--vggish", required=True, help="torchvggish state dict (.pth)")
    p.add_argument("--container", type=int, default=500)
    p.add_argument("--breed", type=int, default=100)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    lv = OriginalLVNS(a.ts, a.vggish, a.container, a.breed, (a.channels, a.frames), a.k, a.sample_rate, a.seed)
    t0 = time.perf_counter()
    lv.evaluate(lv.generate(lv.container))  # the original's run() renders the initial container first
    init_s = time.perf_counter() - t0
    gens = []
    lv.clock = dict.fromkeys(lv.clock, 0.0)
    for _ in range(a.generations):
        t0 = time.perf_counter()
        sp = lv.generation()
        gens.append(time.perf_counter() - t0)
    print(json.dumps({"baseline": "original LVNS-RAVE loop", "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "container": a.container, "breed": a.breed,
                      "k": a.k, "frames": a.frames, "init_s": init_s, "generation_s": gens,
                      "final_mean_sparseness": float(sp.mean()),
                      **{k: v / a.generations for k, v in lv.clock.items()}}), flush=True)


if __name__ == "__main__":
    main()
