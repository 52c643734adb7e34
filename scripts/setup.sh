#!/usr/bin/env bash
# Bootstrap everything the project needs, idempotently:
#   1. system packages (apt-get, when root; otherwise name what is missing and stop),
#   2. the virtual environment .venv with every Python package pinned in requirements/lock.txt,
#   3. the project's packages installed editable (lawm_core, lawm_sim, lawm, lawm_apps),
#   4. the ROS 2 workspace built with colcon into ros2_ws/install.
# Each step records a fingerprint of its inputs; a step whose inputs did not change is skipped,
# so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
START=$(date +%s)
STAMPS="$VENV/.stamps"

log() { printf '[setup] %s\n' "$*"; }
elapsed() { echo $(( $(date +%s) - $1 ))s; }
fingerprint() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- 1. system packages
SYSTEM_PACKAGES=(libosmesa6 libegl1 libgl1-mesa-dri libusb-1.0-0)
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    t=$(date +%s)
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "system packages installed in $(elapsed "$t")"
  else
    echo "[setup] missing system packages: ${missing[*]}" >&2
    echo "[setup] run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  log "system packages present (${SYSTEM_PACKAGES[*]})"
fi

# ---------------------------------------------------------------- 2. virtual environment
if [[ ! -x "$VENV/bin/python" ]]; then
  t=$(date +%s)
  "$PY" -m venv "$VENV"
  log "created $VENV in $(elapsed "$t")"
fi
mkdir -p "$STAMPS"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

want=$(fingerprint requirements/base.txt requirements/lock.txt)
if [[ "$(cat "$STAMPS/pip" 2>/dev/null)" != "$want" ]]; then
  t=$(date +%s)
  log "installing Python packages (requirements/base.txt, pinned by requirements/lock.txt)"
  # torch first and alone, so nothing later can resolve a CUDA build of it.
  # pip's full output goes to a log (the extra local indexes make it chatty); shown on failure.
  piplog="$STAMPS/pip.log"
  if ! { "${PIP[@]}" install "$(grep -E '^torch==' requirements/lock.txt)" \
         && "${PIP[@]}" install -r requirements/base.txt -c requirements/lock.txt; } \
       >"$piplog" 2>&1; then
    tail -40 "$piplog" >&2
    echo "[setup] pip install failed; full log: $piplog" >&2
    exit 1
  fi
  if "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    echo "[setup] torchvision got installed; it must not be (it drags in a CUDA torch)" >&2
    exit 1
  fi
  echo "$want" > "$STAMPS/pip"
  log "Python packages installed in $(elapsed "$t")"
else
  log "Python packages up to date"
fi

# ---------------------------------------------------------------- 3. the project's packages
# Editable installs, one distribution per layer: the contract + runtime core (lawm_core) and the
# simulation (lawm_sim) are plain Python packages that colcon also builds for the ROS image; the
# root pyproject holds training (lawm) and the apps (lawm_apps).
DISTS=(ros2_ws/src/lawm_core ros2_ws/src/lawm_sim .)
want=$(fingerprint pyproject.toml ros2_ws/src/lawm_core/setup.py ros2_ws/src/lawm_sim/setup.py)
if [[ "$(cat "$STAMPS/lawm" 2>/dev/null)" != "$want" ]] \
   || ! "$VENV/bin/python" -c "import lawm, lawm_apps, lawm_core, lawm_sim" 2>/dev/null; then
  t=$(date +%s)
  for d in "${DISTS[@]}"; do
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$d" >"$STAMPS/lawm.log" 2>&1 \
      || { cat "$STAMPS/lawm.log" >&2; exit 1; }
  done
  echo "$want" > "$STAMPS/lawm"
  log "installed lawm_core, lawm_sim, lawm and lawm_apps (editable) in $(elapsed "$t")"
else
  log "project packages up to date"
fi
# Checkouts set up before the runtime core became its own distribution carry a path file that
# put the ROS package on sys.path; it would shadow nothing now, but it hid a layering defect.
purelib=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$purelib/lawm_policy_src.pth"

# ---------------------------------------------------------------- 4. the ROS 2 workspace
# The fingerprint covers the file list and every file colcon copies or reads (package metadata,
# setup.py, launch and config files); python modules are symlinked, so editing one needs no
# rebuild.
ws_files=$(find ros2_ws/src -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort)
ws_read=$(echo "$ws_files" | grep -Ev '\.py$' ; echo "$ws_files" | grep -E '/setup\.py$|\.launch\.py$')
want=$( (echo "$ws_files"; echo "$ws_read" | xargs cat) | sha256sum | cut -c1-16)
if [[ "$(cat "$STAMPS/colcon" 2>/dev/null)" != "$want" ]] || [[ ! -d ros2_ws/install ]]; then
  t=$(date +%s)
  log "building ros2_ws with colcon"
  (
    cd ros2_ws
    unset AMENT_PREFIX_PATH
    PATH="$VENV/bin:$PATH" "$VENV/bin/colcon" --log-base log build --symlink-install \
      --event-handlers console_cohesion- status- summary+ >/dev/null
  )
  echo "$want" > "$STAMPS/colcon"
  log "built ros2_ws in $(elapsed "$t")"
else
  log "ros2_ws up to date"
fi

log "done in $(elapsed "$START") (run tools with .venv/bin/python, or: source scripts/env.sh)"
