#!/usr/bin/env bash
# Builds the agent's virtualenv from a source tree: the one build step of both container images
# (docker/Dockerfile.cpu, docker/Dockerfile.jetson). The tests run this same script in a virtualenv,
# which is how CI exercises the image build without a Docker engine.
#
#   install-venv.sh [--system-site-packages] [--extras EXTRAS] VENV SRC
#
# It builds the wheel, then installs that wheel (never the source tree) into a new virtualenv, so the
# image holds exactly what `pip install edge-agent` gives a user. PYTHON names the interpreter
# (default python3).
set -euo pipefail

usage() {
  echo "usage: $0 [--system-site-packages] [--extras EXTRAS] VENV SRC" >&2
  exit 2
}

venv_options=()
extras=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --system-site-packages) venv_options+=(--system-site-packages); shift ;;
    --extras) [[ $# -ge 2 ]] || usage; extras="$2"; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -eq 2 ]] || usage
venv="$1"
src="$2"
python="${PYTHON:-python3}"

if [[ ! -f "$src/pyproject.toml" ]]; then
  echo "$0: $src has no pyproject.toml; pass the edge-agent source tree" >&2
  exit 2
fi

wheel_dir="$(mktemp -d)"
trap 'rm -rf "$wheel_dir"' EXIT

"$python" -m venv "${venv_options[@]}" "$venv"
"$venv/bin/python" -m pip wheel --disable-pip-version-check --no-deps --wheel-dir "$wheel_dir" "$src"
wheels=("$wheel_dir"/edge_agent-*.whl)
if [[ ${#wheels[@]} -ne 1 || ! -f "${wheels[0]}" ]]; then
  echo "$0: expected one edge_agent wheel in $wheel_dir, found: ${wheels[*]}" >&2
  exit 1
fi
spec="${wheels[0]}"
if [[ -n "$extras" ]]; then
  spec="${spec}[${extras}]"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input "$spec"
"$venv/bin/edge-agent" --version
