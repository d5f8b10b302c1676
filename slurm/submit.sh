#!/bin/bash
# How emsweep submitted sweep '{{ sweep }}' (submission {{ number }}); job ids are in ../submissions.json.
set -euo pipefail
{{ sbatch_lines }}
