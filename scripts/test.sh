#!/usr/bin/env bash
# Install everything the tests need (see scripts/setup.sh --tests) and run the whole suite on CPU:
# the main venv runs every test but the vLLM ones; .venv-vllm runs tests/vllm (vLLM's CPU build, for real).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
.venv/bin/python -m pytest -q --timeout=900 --ignore=tests/vllm "$@" || status=$?
.venv-vllm/bin/python -m pytest -q --timeout=900 tests/vllm "$@" || status=$?
exit $status
