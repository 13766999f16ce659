#!/usr/bin/env bash
# Installs the edge-agent on an NVIDIA Jetson as a systemd service that uses JetPack's TensorRT.
#
#   sudo ./jetson-setup.sh                       install, or bring an installation up to date
#   sudo ./jetson-setup.sh --dry-run             print what it would do; change nothing
#   sudo ./jetson-setup.sh --uninstall           remove the service and its virtualenv
#   sudo ./jetson-setup.sh --uninstall --purge   ... and the models, engines, user and group too
#
# Options:
#   --source PATH|SPEC  what pip installs: a source tree, a wheel or a requirement (default: the directory
#                       holding this script)
#   --python PYTHON     the interpreter the virtualenv is made from (default python3, JetPack's, whose
#                       system site packages hold TensorRT's bindings)
#   --socket PATH       the socket (default /tmp/aws.iot.lookoutvision.EdgeAgent.sock, where clients look)
#   --reinstall         reinstall the agent even if this version is installed (a changed source tree
#                       with the same version, a requirement to upgrade)
#   --root DIR          work on the root filesystem at DIR (an image being prepared; the tests' fake
#                       roots): every path below is taken inside it and the service is not started
#
# What it does: detects the Jetson model and the JetPack / L4T release; checks for TensorRT's Python
# bindings and CUDA (and names the package to install when one is missing); creates the system user
# edge-agent (groups video, for the GPU, and render where it exists); creates /var/lib/edge-agent/models
# and /var/cache/edge-agent/engines; makes /opt/edge-agent/venv with system site packages and installs
# the agent there (with the gpu extra on JetPack 6; with pycuda on JetPack 5's CUDA 11); writes
# /etc/default/edge-agent (once: local edits are kept) and edge-agent.service; builds the TensorRT engines
# of the models already present; enables and starts the service. Each step is skipped, with a line saying
# so, when it is already done: a second run changes nothing.
#
# Exit status: 0 done, 1 a step failed, 2 bad usage, 3 not a supported Jetson, 4 a prerequisite is missing.
set -euo pipefail

readonly SERVICE_USER=edge-agent
readonly UNIT=edge-agent.service
readonly PREFIX=/opt/edge-agent
readonly VENV=/opt/edge-agent/venv
readonly STATE_DIR=/var/lib/edge-agent
readonly MODELS_DIR=/var/lib/edge-agent/models
readonly CACHE_HOME=/var/cache
readonly CACHE_DIR=/var/cache/edge-agent
readonly ENGINES_DIR=/var/cache/edge-agent/engines
readonly ENV_FILE=/etc/default/edge-agent
readonly UNIT_FILE=/etc/systemd/system/edge-agent.service
readonly STAMP_FILE=/opt/edge-agent/venv/.edge-agent-install
readonly DEFAULT_SOCKET=/tmp/aws.iot.lookoutvision.EdgeAgent.sock
readonly METRICS_PORT=9464

ROOT=/
DRY_RUN=0
UNINSTALL=0
PURGE=0
REINSTALL=0
PYTHON=python3
SOCKET_PATH=$DEFAULT_SOCKET
SOURCE=""
CHANGED_UNIT=0
CHANGED_AGENT=0
CHANGED_ENV=0

say() { printf '%s\n' "$*"; }
skip() { printf 'skip: %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  printf 'error: %s\n' "$*" >&2
  exit "$code"
}

usage() {
  sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
  exit "${1:-2}"
}

quoted() {
  local words=() word
  for word in "$@"; do
    words+=("$(printf '%q' "$word")")
  done
  printf '%s' "${words[*]}"
}

# Runs a command that changes the system; with --dry-run only prints it.
act() {
  if ((DRY_RUN)); then
    say "would run: $(quoted "$@")"
    return 0
  fi
  say "+ $(quoted "$@")"
  "$@"
}

# A path inside the root being set up.
at() { printf '%s' "${ROOT%/}$1"; }

# --- arguments -----------------------------------------------------------------------------------

parse_args() {
  local given
  given=$(quoted "$@")
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --uninstall) UNINSTALL=1 ;;
      --purge) PURGE=1 ;;
      --reinstall) REINSTALL=1 ;;
      --root | --source | --python | --socket)
        (($# >= 2)) || die 2 "$1 needs a value (see --help)"
        case "$1" in
          --root) ROOT=$2 ;;
          --source) SOURCE=$2 ;;
          --python) PYTHON=$2 ;;
          --socket) SOCKET_PATH=$2 ;;
        esac
        shift
        ;;
      -h | --help) usage 0 ;;
      *) die 2 "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  if ((PURGE && !UNINSTALL)); then
    die 2 "--purge goes with --uninstall"
  fi
  [[ $ROOT == /* ]] || die 2 "--root needs an absolute path, not $ROOT"
  [[ -d $ROOT ]] || die 2 "--root $ROOT is not a directory"
  ROOT=$(cd "$ROOT" && pwd -P)
  if [[ $ROOT == / ]] && ((EUID != 0)) && ((!DRY_RUN)); then
    die 1 "run it as root: sudo $0 $given"
  fi
  if [[ -z $SOURCE ]]; then
    SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
  elif [[ -e $SOURCE ]]; then # a path: made absolute, so that the install stamp names it the same way
    SOURCE="$(cd "$(dirname "$SOURCE")" && pwd -P)/$(basename "$SOURCE")"
  fi
}

# --- detection -------------------------------------------------------------------------------------

# The installed version of a Debian package, or nothing.
package_version() {
  command -v dpkg-query >/dev/null 2>&1 || return 0
  # shellcheck disable=SC2016  # dpkg-query's own ${field} syntax
  dpkg-query --admindir="$(at /var/lib/dpkg)" -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
    awk '$3 == "installed" { print $4 }' || true
}

# JetPack release of an L4T release, for the releases NVIDIA published.
jetpack_of_l4t() {
  case "$1" in
    35.1.*) echo 5.0.2 ;;
    35.2.*) echo 5.1 ;;
    35.3.*) echo 5.1.1 ;;
    35.4.*) echo 5.1.2 ;;
    35.5.*) echo 5.1.3 ;;
    35.6.*) echo 5.1.4 ;;
    36.2.*) echo 6.0-DP ;;
    36.3.*) echo 6.0 ;;
    36.4.0 | 36.4.1 | 36.4.2) echo 6.1 ;;
    36.4.3) echo 6.2 ;;
    36.4.4) echo 6.2.1 ;;
    35.*) echo 5 ;;
    36.*) echo 6 ;;
  esac
}

detect_jetson() {
  local release_file model_file line core jetpack_pkg
  release_file=$(at /etc/nv_tegra_release)
  model_file=$(at /proc/device-tree/model)
  if [[ ! -r $release_file ]]; then
    local what="no $release_file"
    if [[ -r $model_file ]]; then
      what="$what; the board is \"$(tr -d '\0' <"$model_file")\""
    fi
    die 3 "this is not an NVIDIA Jetson running L4T ($what). This script sets up Jetsons; elsewhere install" \
      "with pip (pip install 'edge-agent[gpu]') or run the container (docker/Dockerfile.cpu)."
  fi
  JETSON_MODEL="an unknown Jetson"
  if [[ -r $model_file ]]; then
    JETSON_MODEL=$(tr -d '\0' <"$model_file")
  fi
  line=$(head -n 1 "$release_file")
  if [[ ! $line =~ ^#\ R([0-9]+)\ \(release\),\ REVISION:\ ([0-9]+)(\.([0-9]+))? ]]; then
    die 3 "cannot read the L4T release from $release_file (first line: $line)"
  fi
  L4T_MAJOR=${BASH_REMATCH[1]}
  L4T_VERSION="$L4T_MAJOR.${BASH_REMATCH[2]}.${BASH_REMATCH[4]:-0}"
  core=$(package_version nvidia-l4t-core)
  if [[ -n $core ]]; then
    L4T_VERSION=${core%%-*}
  fi
  case "$L4T_MAJOR" in
    35 | 36) ;;
    32) die 3 "$JETSON_MODEL runs JetPack 4 (L4T $L4T_VERSION), which is not supported: its Python 3.6 and" \
      "TensorRT 8.2 are too old for the agent. Flash JetPack 6." ;;
    *) die 3 "$JETSON_MODEL runs L4T $L4T_VERSION, a release this script does not know (JetPack 5 is L4T R35," \
      "JetPack 6 is L4T R36)." ;;
  esac
  jetpack_pkg=$(package_version nvidia-jetpack)
  if [[ -n $jetpack_pkg ]]; then
    JETPACK=${jetpack_pkg%%[+-]*}
  else
    JETPACK="$(jetpack_of_l4t "$L4T_VERSION") (nvidia-jetpack is not installed)"
  fi
  say "Jetson: $JETSON_MODEL, JetPack $JETPACK, L4T $L4T_VERSION"
}

check_python() {
  command -v "$PYTHON" >/dev/null 2>&1 || die 4 "$PYTHON not found: install python3 and python3-venv" \
    "(sudo apt-get install python3 python3-venv)"
  PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    if ((L4T_MAJOR == 35)); then
      die 3 "JetPack 5 comes with Python $PY_VERSION and the agent needs Python 3.10 or later. Flash JetPack 6," \
        "or pass --python with a Python 3.10+ interpreter that has TensorRT's bindings built for it."
    fi
    die 3 "$PYTHON is Python $PY_VERSION; the agent needs Python 3.10 or later (pass --python)."
  fi
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die 4 "$PYTHON cannot make virtualenvs: install" \
    "python3-venv (sudo apt-get install python3-venv)"
  say "Python: $PYTHON ($PY_VERSION)"
}

check_tensorrt() {
  local packaged
  if TRT_VERSION=$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null); then
    say "TensorRT: $TRT_VERSION (Python bindings)"
    return
  fi
  packaged=$(package_version python3-libnvinfer)
  if [[ -n $packaged ]]; then
    die 4 "python3-libnvinfer $packaged is installed but $PYTHON ($PY_VERSION) cannot import tensorrt: the" \
      "bindings are built for another Python. Use JetPack's python3, or build TensorRT's bindings for $PYTHON."
  fi
  die 4 "TensorRT's Python bindings are missing: install python3-libnvinfer (sudo apt-get install" \
    "python3-libnvinfer; it is part of nvidia-jetpack)."
}

check_cuda() {
  local runtime=() driver=() name
  shopt -s nullglob
  runtime=("$(at /usr/local/cuda)"/lib64/libcudart.so.* "$(at /usr/local/cuda)"/targets/aarch64-linux/lib/libcudart.so.*)
  driver=("$(at /usr/lib/aarch64-linux-gnu)"/nvidia/libcuda.so* "$(at /usr/lib/aarch64-linux-gnu)"/tegra/libcuda.so*)
  shopt -u nullglob
  if ((${#runtime[@]} == 0)); then
    die 4 "the CUDA runtime is missing (no libcudart under $(at /usr/local/cuda)): install nvidia-cuda" \
      "(sudo apt-get install nvidia-cuda; it is part of nvidia-jetpack)."
  fi
  if ((${#driver[@]} == 0)); then
    die 4 "the CUDA driver (libcuda.so) is missing: install nvidia-l4t-cuda (sudo apt-get install nvidia-l4t-cuda)."
  fi
  name=${runtime[0]##*/libcudart.so.}
  CUDA_MAJOR=${name%%.*}
  [[ $CUDA_MAJOR =~ ^[0-9]+$ ]] || die 4 "cannot tell the CUDA version from ${runtime[0]}"
  say "CUDA: $CUDA_MAJOR (${runtime[0]#"${ROOT%/}"})"
  if ((CUDA_MAJOR < 12)); then
    # cuda-python 12 (the gpu extra) needs a CUDA 12 driver; pycuda is built against the local CUDA 11.
    [[ -x $(at /usr/local/cuda/bin/nvcc) ]] || die 4 "pycuda, the CUDA binding for CUDA $CUDA_MAJOR, is built" \
      "against the CUDA toolkit: install nvidia-cuda-dev (sudo apt-get install nvidia-cuda-dev)."
    "$PYTHON" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
      die 4 "pycuda is built against Python's headers: install python$PY_VERSION-dev (sudo apt-get install python$PY_VERSION-dev)."
  fi
}

# Where the agent comes from, and its version when that can be known before installing.
describe_source() {
  local version_file base
  SOURCE_VERSION=""
  if [[ -d $SOURCE ]]; then
    version_file="$SOURCE/edge_agent/_version.py"
    [[ -f "$SOURCE/pyproject.toml" && -f $version_file ]] ||
      die 2 "--source $SOURCE is not an edge-agent source tree (no pyproject.toml and edge_agent/_version.py)"
    SOURCE_VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$version_file")
  elif [[ -f $SOURCE ]]; then
    base=${SOURCE##*/}
    [[ $base == edge_agent-*.whl ]] || die 2 "--source $SOURCE is not an edge_agent wheel"
    SOURCE_VERSION=${base#edge_agent-}
    SOURCE_VERSION=${SOURCE_VERSION%%-*}
  fi
  say "agent: edge-agent ${SOURCE_VERSION:-(version decided by pip)} from $SOURCE"
}

# --- users, directories, files ---------------------------------------------------------------------

entry_exists() { grep -q "^$2:" "$(at "/etc/$1")" 2>/dev/null; }
in_group() { grep -Eq "^$1:[^:]*:[^:]*:(.*,)?$2(,.*)?\$" "$(at /etc/group)" 2>/dev/null; }
id_of() { awk -F: -v name="$2" '$1 == name { print $3 }' "$(at "/etc/$1")" 2>/dev/null; }

# useradd and friends take --root to work on another root filesystem.
account_args() {
  if [[ $ROOT != / ]]; then
    printf '%s\n' --root "$ROOT"
  fi
}

ensure_account() {
  local extra=() groups=(video) group
  mapfile -t extra < <(account_args)
  if entry_exists group render; then
    groups+=(render)
  fi
  if entry_exists group "$SERVICE_USER"; then
    skip "group $SERVICE_USER exists"
  else
    act groupadd "${extra[@]}" --system "$SERVICE_USER"
  fi
  if ! entry_exists passwd "$SERVICE_USER"; then
    act useradd "${extra[@]}" --system --gid "$SERVICE_USER" --groups "$(
      IFS=,
      echo "${groups[*]}"
    )" --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
    return
  fi
  skip "user $SERVICE_USER exists"
  for group in "${groups[@]}"; do
    if in_group "$group" "$SERVICE_USER"; then
      skip "user $SERVICE_USER is in group $group"
    else
      act usermod "${extra[@]}" --append --groups "$group" "$SERVICE_USER"
    fi
  done
}

# A directory with this owner and mode.
ensure_dir() {
  local path=$1 owner=$2 mode=$3 target uid gid
  target=$(at "$path")
  uid=$(id_of passwd "$owner")
  gid=$(id_of group "$owner")
  if [[ -z $uid || -z $gid ]]; then # only with --dry-run: the user is not made yet
    act install -d -o "$owner" -g "$owner" -m "$mode" "$target"
    return
  fi
  if [[ -d $target && $(stat -c '%u:%g %a' "$target") == "$uid:$gid ${mode#0}" ]]; then
    skip "$path exists ($owner, mode $mode)"
    return
  fi
  act install -d -o "$uid" -g "$gid" -m "$mode" "$target"
}

# A file with exactly this content and mode; sets the named flag when it writes.
ensure_file() {
  local path=$1 mode=$2 content=$3 flag=$4 policy=${5:-replace} target tmp
  target=$(at "$path")
  tmp=$(mktemp)
  printf '%s\n' "$content" >"$tmp"
  if [[ -f $target ]] && cmp -s "$tmp" "$target" && [[ $(stat -c '%a' "$target") == "${mode#0}" ]]; then
    skip "$path is up to date"
    rm -f "$tmp"
    return
  fi
  if [[ -f $target && $policy == keep ]]; then
    skip "keeping $path: it differs from the default (local settings)"
    rm -f "$tmp"
    return
  fi
  printf -v "$flag" 1
  if ((DRY_RUN)); then
    say "would write: $path (mode $mode)"
    rm -f "$tmp"
    return
  fi
  install -D -m "$mode" "$tmp" "$target"
  rm -f "$tmp"
  say "wrote: $path"
}

env_file_content() {
  cat <<EOF
# edge-agent settings, read by $UNIT. jetson-setup.sh writes this file once and keeps your edits.
# Every \`edge-agent serve\` option has an EDGE_AGENT_<OPTION> variable (see the README).
EDGE_AGENT_SOCKET_PATH=$SOCKET_PATH
# Members of this group may use the socket (mode 0660): sudo usermod -aG $SERVICE_USER USER
EDGE_AGENT_SOCKET_GROUP=$SERVICE_USER
EDGE_AGENT_MODELS_DIRS=$MODELS_DIR
EDGE_AGENT_BACKEND=auto
EDGE_AGENT_METRICS_PORT=$METRICS_PORT
EOF
}

unit_content() {
  cat <<EOF
# Installed by jetson-setup.sh; rerun it (or jetson-setup.sh --uninstall) rather than editing this file.
# Settings: $ENV_FILE.
[Unit]
Description=edge-agent: Lookout for Vision Edge Agent API for anomaly-detection models (TensorRT)
After=local-fs.target

[Service]
Type=simple
User=$SERVICE_USER
Group=$SERVICE_USER
# TensorRT engines are cached in $ENGINES_DIR.
Environment=XDG_CACHE_HOME=$CACHE_HOME
Environment=HOME=$STATE_DIR
Environment=PYTHONUNBUFFERED=1
EnvironmentFile=-$ENV_FILE
ExecStart=$VENV/bin/edge-agent serve
# SIGTERM: the agent stops taking calls, lets calls in flight finish, stops the models, removes the socket.
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
# The socket is in /tmp, where clients look for it: /tmp stays shared.
PrivateTmp=false
NoNewPrivileges=true
ProtectSystem=full
ProtectHome=true

[Install]
WantedBy=multi-user.target
EOF
}

# --- the agent ---------------------------------------------------------------------------------------

ensure_venv() {
  local cfg
  cfg=$(at "$VENV/pyvenv.cfg")
  if [[ -f $cfg && -x $(at "$VENV/bin/python") ]] &&
    grep -Eq '^include-system-site-packages *= *true' "$cfg" &&
    grep -Eq "^version(_info)? *= *$PY_VERSION(\.|\$)" "$cfg"; then
    skip "virtualenv $VENV exists (Python $PY_VERSION, system site packages)"
    return
  fi
  if [[ -e $(at "$VENV") ]]; then
    act rm -rf "$(at "$VENV")"
  fi
  # System site packages: JetPack's TensorRT bindings are installed there, not on PyPI.
  act "$PYTHON" -m venv --system-site-packages "$(at "$VENV")"
}

ensure_agent() {
  local spec=$SOURCE extra=() stamp stamp_file pip_args=()
  # A source tree or wheel gets the gpu extra (cuda-python 12) on CUDA 12; a requirement is taken as
  # written (name the extra in it: 'edge-agent[gpu]==0.1.0'). CUDA 11 (JetPack 5) gets pycuda instead.
  if [[ -e $SOURCE ]] && ((CUDA_MAJOR >= 12)); then
    spec="${SOURCE}[gpu]"
  fi
  if ((CUDA_MAJOR < 12)); then
    extra=(pycuda)
  fi
  stamp="$SOURCE ${SOURCE_VERSION:-unversioned} ${spec#"$SOURCE"} ${extra[*]}"
  stamp_file=$(at "$STAMP_FILE")
  # pip would not upgrade a requirement it finds satisfied either: the same stamp means nothing to do.
  if ((!REINSTALL)) && [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]] &&
    "$(at "$VENV/bin/edge-agent")" --version >/dev/null 2>&1; then
    skip "edge-agent ${SOURCE_VERSION:-($SOURCE)} is installed in $VENV"
    return
  fi
  if ((REINSTALL)); then
    pip_args=(--force-reinstall)
  fi
  CHANGED_AGENT=1
  act "$(at "$VENV/bin/python")" -m pip install --disable-pip-version-check --no-input "${pip_args[@]}" \
    "$spec" "${extra[@]}"
  if ((!DRY_RUN)); then
    printf '%s\n' "$stamp" >"$stamp_file"
  fi
}

build_engines() {
  local agent models=() dir help args=(build-engines) runner=()
  shopt -s nullglob
  for dir in "$(at "$MODELS_DIR")"/*/; do
    if [[ -f $dir/manifest.json ]]; then
      dir=${dir%/}
      models+=("${dir##*/}")
    fi
  done
  shopt -u nullglob
  if ((${#models[@]} == 0)); then
    skip "engines: no models in $MODELS_DIR yet (a model's engine is built when it first starts, or by" \
      "edge-agent build-engines)"
    return
  fi
  agent=$(at "$VENV/bin/edge-agent")
  if [[ ! -x $agent ]]; then
    say "would build the engines of ${#models[@]} model(s) once the agent is installed: ${models[*]}"
    return
  fi
  if ! help=$("$agent" build-engines --help 2>/dev/null); then
    skip "engines: this edge-agent has no build-engines command; each model's engine is built when it first" \
      "starts"
    return
  fi
  if [[ $help == *--models-dir* ]]; then
    args+=(--models-dir "$(at "$MODELS_DIR")")
  fi
  if [[ $help == *--cache-dir* ]]; then
    args+=(--cache-dir "$(at "$ENGINES_DIR")")
  fi
  if [[ $ROOT == / ]]; then
    runner=(runuser -u "$SERVICE_USER" --) # the cache belongs to the service's user
  fi
  say "engines: ${#models[@]} model(s) in $MODELS_DIR: ${models[*]} (engines already cached are reused)"
  if ! act "${runner[@]}" env "XDG_CACHE_HOME=$(at "$CACHE_HOME")" "EDGE_AGENT_MODELS_DIRS=$(at "$MODELS_DIR")" \
    "$agent" "${args[@]}"; then
    warn "building the engines failed (see above); the service is installed and builds a model's engine" \
      "when the model starts"
  fi
}

systemctl_root() {
  if [[ $ROOT != / ]]; then
    printf '%s\n' "--root=$ROOT"
  fi
}

ensure_service() {
  local on_root=()
  mapfile -t on_root < <(systemctl_root)
  if [[ $ROOT == / ]] && ((CHANGED_UNIT)); then
    act systemctl daemon-reload
  fi
  if systemctl "${on_root[@]}" is-enabled --quiet "$UNIT" 2>/dev/null; then
    skip "$UNIT is enabled"
  else
    act systemctl "${on_root[@]}" enable "$UNIT"
  fi
  if [[ $ROOT != / ]]; then
    skip "not starting $UNIT: --root is not /"
    return
  fi
  if ((CHANGED_UNIT || CHANGED_AGENT || CHANGED_ENV)); then
    act systemctl restart "$UNIT"
  elif systemctl is-active --quiet "$UNIT"; then
    skip "$UNIT is running"
  else
    act systemctl start "$UNIT"
  fi
}

install_agent() {
  detect_jetson
  check_python
  check_tensorrt
  check_cuda
  describe_source
  ensure_account
  ensure_dir "$PREFIX" root 0755
  ensure_dir "$STATE_DIR" "$SERVICE_USER" 0755
  ensure_dir "$MODELS_DIR" "$SERVICE_USER" 0755
  ensure_dir "$CACHE_DIR" "$SERVICE_USER" 0750
  ensure_dir "$ENGINES_DIR" "$SERVICE_USER" 0750
  ensure_venv
  ensure_agent
  ensure_file "$ENV_FILE" 0644 "$(env_file_content)" CHANGED_ENV keep
  ensure_file "$UNIT_FILE" 0644 "$(unit_content)" CHANGED_UNIT
  build_engines
  ensure_service
  if ((DRY_RUN)); then
    say "dry run done: nothing was changed"
    return
  fi
  say "ready: $UNIT serves the models in $MODELS_DIR on $SOCKET_PATH (metrics on port $METRICS_PORT)."
  say "  clients: sudo usermod -aG $SERVICE_USER USER (then log in again) lets USER's programs use the socket"
  say "  logs:    journalctl -u $UNIT -f"
}

# --- uninstall --------------------------------------------------------------------------------------

remove_path() {
  if [[ -e $(at "$1") || -L $(at "$1") ]]; then
    act rm -rf "$(at "$1")"
  else
    skip "$1 is not there"
  fi
}

uninstall_agent() {
  local on_root=() extra=()
  mapfile -t on_root < <(systemctl_root)
  mapfile -t extra < <(account_args)
  if [[ -f $(at "$UNIT_FILE") ]]; then
    if [[ $ROOT == / ]]; then
      act systemctl disable --now "$UNIT"
    else
      act systemctl "${on_root[@]}" disable "$UNIT"
    fi
  else
    skip "$UNIT is not installed"
  fi
  remove_path "$UNIT_FILE"
  if [[ $ROOT == / ]]; then
    act systemctl daemon-reload
  fi
  remove_path "$PREFIX"
  remove_path "$ENV_FILE"
  if ((!PURGE)); then
    say "kept $MODELS_DIR (models), $CACHE_DIR (engines) and the user $SERVICE_USER: --purge removes them"
    return
  fi
  remove_path "$STATE_DIR"
  remove_path "$CACHE_DIR"
  if entry_exists passwd "$SERVICE_USER"; then
    act userdel "${extra[@]}" "$SERVICE_USER"
  else
    skip "user $SERVICE_USER is not there"
  fi
  if entry_exists group "$SERVICE_USER"; then
    act groupdel "${extra[@]}" "$SERVICE_USER"
  else
    skip "group $SERVICE_USER is not there"
  fi
}

main() {
  parse_args "$@"
  if ((DRY_RUN)); then
    say "dry run: nothing is changed"
  fi
  if ((UNINSTALL)); then
    uninstall_agent
  else
    install_agent
  fi
}

main "$@"
