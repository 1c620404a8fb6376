#!/usr/bin/env bash
# Reference (PyTorch) venv for parity fixtures and the original-algorithm baseline (lvns bench --baseline):
#   REF_VENV=refvenv bash experiments/baselines/setup_ref_venv.sh
# acids-rave pins torch 2.5/numpy<2/old scipy; installing it with deps breaks everything, so --no-deps.
set -e
REF_VENV="${REF_VENV:?set REF_VENV}"
[ -x "$REF_VENV/bin/python" ] || python3 -m venv "$REF_VENV"
P="$REF_VENV/bin/pip"
"$P" install -q --upgrade pip
# numpy<2.4 and scipy 1.13: rave's PQMF design (kaiserord on a 1-element array, firwin(nyq=...)) fails on newer ones
"$P" install -q torch==2.13.0 "numpy==2.2.6" "scipy==1.13.1" soundfile h5py tqdm
"$P" install -q --no-deps acids-rave==2.3.1 cached-conv udls gin-config einops "pytorch-lightning<2" \
    lightning-utilities torchmetrics GPUtil absl-py pyyaml "setuptools<81" cloudpickle packaging \
    librosa scikit-learn narwhals flask torchvggish==0.2 resampy numba llvmlite \
    joblib threadpoolctl audioread lazy_loader msgpack soxr pooch decorator typing_extensions \
    fsspec networkx sympy jinja2 markupsafe itsdangerous werkzeug click blinker lmdb torchaudio==2.11.0 nn-tilde requests urllib3 idna certifi \
    charset-normalizer protobuf
# torchaudio 2.11 is built for another torch: without its compiled libs it falls back to pure Python,
# which is all rave needs (Spectrogram transforms)
rm -f "$REF_VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
echo "ref venv ready: $REF_VENV"
