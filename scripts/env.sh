# Source this file (bash) to use the project's environment in a shell:
#   source scripts/env.sh
# It activates .venv, points ament at the ROS 2 wheels inside it, and overlays ros2_ws/install.
_lawm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_lawm_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV"
export ROS_HOME="${ROS_HOME:-$HOME/.ros}"
if [[ -f "$_lawm_root/ros2_ws/install/setup.bash" ]]; then
  # colcon's setup script prepends the workspace packages to AMENT_PREFIX_PATH and PYTHONPATH.
  # shellcheck disable=SC1091
  source "$_lawm_root/ros2_ws/install/setup.bash"
fi
unset _lawm_root
