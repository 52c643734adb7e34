# LAWM ROS 2 runtime: RealSense camera and policy nodes on ROS 2 Jazzy (Ubuntu 24.04, Python
# 3.12) with onnxruntime on the GPU. Build from the repository root:
#
#   docker build -f docker/ros.Dockerfile -t lawm-ros .
#
# docker/README.md says how to run it. There is no Docker engine on the development machine, so
# this file is not built there; its Python pins are the ones requirements/lock.txt gives
# `make setup`, and tests/test_docker.py checks it against the repository.
FROM ros:jazzy-ros-base

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The rosdep keys (exec_depend and test_depend) of the runtime packages' package.xml files as
# Ubuntu packages (many come with ros-base already; listed so the image does not rely on that;
# tests/test_docker.py keeps the two in step), the real cv_bridge, and the numpy 1.26 / OpenCV 4.6
# of Ubuntu 24.04 that it and the ROS message packages are compiled against: a pip numpy 2 (which
# opencv-python-headless 4.14 requires) breaks their import, so neither comes from pip here.
# matplotlib: replay_eval's plot. For the arm: MoveIt Servo's command type service
# (moveit_msgs), the GripperCommand action (control_msgs), JointTrajectory, TF lookups (tf2_ros).
# For the cameras: the RealSense ROS driver (realsense2_camera, an alternative to lawm_policy's
# own camera node) and image_transport with its plugins (compressed images). ros2cli and
# ros2launch: the `ros2` commands the entrypoint runs. pytest: `colcon test` below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3-pip \
      python3-venv \
      libusb-1.0-0 \
      ros-jazzy-cv-bridge \
      python3-numpy \
      python3-opencv \
      python3-matplotlib \
      ros-jazzy-rclpy \
      ros-jazzy-rcl-interfaces \
      ros-jazzy-rosgraph-msgs \
      ros-jazzy-sensor-msgs \
      ros-jazzy-geometry-msgs \
      ros-jazzy-std-msgs \
      ros-jazzy-std-srvs \
      ros-jazzy-diagnostic-msgs \
      ros-jazzy-lifecycle-msgs \
      ros-jazzy-trajectory-msgs \
      ros-jazzy-moveit-msgs \
      ros-jazzy-control-msgs \
      ros-jazzy-tf2-ros \
      ros-jazzy-launch \
      ros-jazzy-launch-ros \
      ros-jazzy-ament-index-python \
      ros-jazzy-ros2cli \
      ros-jazzy-ros2launch \
      ros-jazzy-realsense2-camera \
      ros-jazzy-image-transport \
      ros-jazzy-image-transport-plugins \
      python3-pytest \
 && rm -rf /var/lib/apt/lists/*

# Python packages live in a venv that also sees the system site-packages (ROS, numpy, OpenCV):
# pip never touches Debian's files, and the workspace is built with this venv's colcon so the node
# executables run its Python, as `make setup` does with .venv.
# Pins: requirements/lock.txt as constraints, minus the numpy/OpenCV pins (see above) and
# ml_dtypes (onnx's dependency; 0.6 needs numpy 2, 0.5 does not). onnx parses a model folder's
# graph before onnxruntime loads it (lawm_core.model_files). openvino: the bf16/int8 CPU backends
# (lawm_core.backends); a separate package that leaves onnxruntime's module alone.
# onnxruntime-gpu: 1.31.1 is the newest GPU release (the lock's CPU onnxruntime is 1.32.0, which
# has no GPU build); its cuda and cudnn extras bring CUDA 13 and cuDNN 9 as pip wheels. Never the
# CPU `onnxruntime` as well: both install the same module and clobber each other.
ENV VIRTUAL_ENV=/opt/lawm/venv
ENV PATH=/opt/lawm/venv/bin:$PATH
COPY requirements/lock.txt /opt/lawm/requirements/lock.txt
RUN python3 -m venv --system-site-packages "$VIRTUAL_ENV" \
 && grep -vE '^(numpy|opencv-python|opencv-python-headless|ml.dtypes)==' \
      /opt/lawm/requirements/lock.txt > /opt/lawm/requirements/constraints.txt \
 && printf 'numpy<2\nml_dtypes<0.6\n' >> /opt/lawm/requirements/constraints.txt \
 && pip install -c /opt/lawm/requirements/constraints.txt \
      "onnxruntime-gpu[cuda,cudnn]==1.31.1" \
      pyrealsense2==2.59.1.11053 \
      tokenizers==0.23.3 \
      onnx==1.23.2 \
      openvino==2026.4.1 \
      rosbags==0.11.9 \
      colcon-common-extensions==0.3.0 \
      "setuptools<80"

# Exactly one onnxruntime, the GPU build, with its CUDA provider compiled in.
RUN if pip show onnxruntime >/dev/null 2>&1; then echo "CPU onnxruntime is installed" >&2; exit 1; fi \
 && python -c "import onnxruntime as o; p = o.get_available_providers(); print(o.__version__, p); \
assert 'CUDAExecutionProvider' in p" \
 && python -c "import numpy, cv2, onnx, openvino, pyrealsense2, tokenizers; print('numpy', numpy.__version__)"

# The CUDA and cuDNN libraries from those wheels, made visible to the dynamic loader so the CUDA
# provider loads. libcuda itself comes from the host driver (docker run --gpus all).
RUN find "$VIRTUAL_ENV" -path '*/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u \
      > /etc/ld.so.conf.d/lawm-nvidia.conf \
 && ldconfig

# The workspace, built (copied, not symlinked) with the venv's colcon over /opt/ros/jazzy, then
# its packages' own tests (`colcon test`, as `make colcon-test` runs them): lawm_core's checks run
# here; the lint tests say they skipped (no ruff and no ruff settings in the image: the sources
# are linted in the repository).
COPY ros2_ws/src /opt/lawm/ws/src
RUN . /opt/ros/jazzy/setup.sh \
 && cd /opt/lawm/ws \
 && colcon build \
 && colcon test --event-handlers console_direct+ \
 && colcon test-result --verbose \
 && rm -rf build log

# Camera-sized DDS transports (see lawm_bringup/config/fastdds.xml).
ENV FASTRTPS_DEFAULT_PROFILES_FILE=/opt/lawm/ws/install/lawm_bringup/share/lawm_bringup/config/fastdds.xml

COPY docker/entrypoint.sh /opt/lawm/entrypoint.sh
RUN chmod 755 /opt/lawm/entrypoint.sh \
 && mkdir -p /models

# The nodes run as an unprivileged user (ROS logs in its home). The installed software (venv,
# workspace) stays root-owned and read-only to it; /opt/lawm itself is its working directory.
# video, plugdev: the groups camera device nodes are commonly given to on the host.
RUN useradd --create-home --shell /bin/bash --groups video,plugdev lawm \
 && chown lawm:lawm /opt/lawm
USER lawm

# /models: mount the exported model directory (policy.onnx, policy.json, text encoder) here.
WORKDIR /opt/lawm
ENTRYPOINT ["/opt/lawm/entrypoint.sh"]
CMD []
