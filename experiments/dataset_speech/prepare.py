"""UNTRAINED demo data for a dataset-initialised run: espeak-ng speech encoded by a random-init RAVE.

Nothing here is a trained model: the RAVE export is the small random-init acids-rave fixture
tests/fixtures/rave/v2.ts (44.1 kHz, hop 2048, latent size 4), so the latents carry no meaning
and the decoded sounds are noise-like. The point is the pipeline a user runs with a real model:

    lvns encode AUDIO_DIR --rave MODEL.ts --out latents.npz      # this script, step 2
    lvns convert rave MODEL.ts --out weights/NAME                 # this script, step 3 (once)
    lvns run experiments/dataset_speech/speech_untrained.toml    # the search

Run from the repository root: python experiments/dataset_speech/prepare.py
Needs espeak-ng on the PATH (apt-get install espeak-ng) and torch (pip install -e '.[convert]').
Writes experiments/dataset_speech/data/ (audio/, latents.npz, rave_v2_untrained/), not committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(HERE, "data")
MODEL = os.path.join(ROOT, "tests", "fixtures", "rave", "v2.ts")

# Harvard sentences (IEEE 1969 recommended practice), list 1-2: public domain.
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
]
VOICES = ["en-us", "en-gb", "en-gb-scotland"]


def speak(text: str, voice: str, path: str) -> None:
    # espeak-ng writes 22.05 kHz mono WAV: `lvns encode` resamples it to the model's 44.1 kHz.
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", path, text], check=True)


def main() -> int:
    if shutil.which("espeak-ng") is None:
        print("espeak-ng not found: apt-get install espeak-ng", file=sys.stderr)
        return 1
    sys.path.insert(0, ROOT)
    from lvns_jax import cli

    audio = os.path.join(DATA, "audio")
    os.makedirs(audio, exist_ok=True)
    for v in VOICES:
        for i, s in enumerate(SENTENCES):
            p = os.path.join(audio, v, f"h{i:02d}.wav")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if not os.path.exists(p):
                speak(s, v, p)
    print(f"1. {len(VOICES) * len(SENTENCES)} espeak-ng clips in {audio}")
    steps = [
        ["encode", audio, "--rave", MODEL, "--out", os.path.join(DATA, "latents.npz")],
        ["convert", "rave", MODEL, "--out", os.path.join(DATA, "rave_v2_untrained")],
    ]
    for n, argv in enumerate(steps, 2):
        print(f"{n}. lvns " + " ".join(os.path.relpath(a, ROOT) if os.path.isabs(a) else a for a in argv))
        rc = cli.main(argv)
        if rc:
            return rc
    print("next: lvns run experiments/dataset_speech/speech_untrained.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
