#!/usr/bin/env bash
# Entrypoint of the lawm-ros image.
#
# Sources ROS 2 Jazzy and the LAWM workspace, then:
#   - no arguments, or a first argument that is a launch argument (name:=value) or a
#     `ros2 launch` option (starting with '-'):
#       ros2 launch lawm_bringup "${LAUNCH_FILE:-robot.launch.py}" "$@"
#   - anything else is run as a command in the sourced environment, e.g.
#       docker run ... lawm-ros bash
#       docker run ... lawm-ros ros2 run lawm_policy realsense_camera --ros-args -p fps:=15
#
# ROS_SETUP and LAWM_WS_SETUP override the two setup files (the tests use stand-ins).
set -eo pipefail # no -u: the ROS setup scripts read unset variables

# shellcheck source=/dev/null
source "${ROS_SETUP:-/opt/ros/jazzy/setup.bash}"
# shellcheck source=/dev/null
source "${LAWM_WS_SETUP:-/opt/lawm/ws/install/setup.bash}"

if [[ $# -eq 0 || "$1" == *":="* || "$1" == -* ]]; then
  exec ros2 launch lawm_bringup "${LAUNCH_FILE:-robot.launch.py}" "$@"
fi
exec "$@"
