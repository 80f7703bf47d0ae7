# MAGE suite image: the steps of .ci/run (install requirements.txt, run the tests: here the fast tier), on CUDA or CPU.
#
#   docker build -t mage-suite .                                            # CUDA 12 runtime + torch's CUDA build
#   docker build --build-arg BASE=python:3.11-slim -t mage-suite:cpu .     # CPU only (torch's CPU build)
#   docker run --gpus all --rm -v "$PWD/runs:/app/runs" mage-suite         # the tiny MAGE run (CMD below)
#
# torch is pinned in requirements.txt; it is installed first from PyTorch's index for the chosen base (CUDA or CPU
# wheels), so that `pip install -r requirements.txt` finds it satisfied and installs exactly the other pins.
# Override the index with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ to match another driver.
ARG BASE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE}

ARG BASE
ARG TORCH_INDEX=""
# git is not in the image (.dockerignore drops .git): tell result files which commit they came from
ARG GIT_COMMIT=unknown
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAGE_GIT_COMMIT=${GIT_COMMIT} \
    MAGE_DATA_DIR=/data/datasets

# Python 3.11: python:3.11-slim has it; the CUDA image (Ubuntu 22.04) gets it from Ubuntu's universe.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements.txt ./
RUN index="${TORCH_INDEX}" && \
    if [ -z "$index" ]; then \
        case "$BASE" in \
            nvidia/cuda*) index=https://download.pytorch.org/whl/cu128 ;; \
            *) index=https://download.pytorch.org/whl/cpu ;; \
        esac; \
    fi && \
    python -m pip install --upgrade pip && \
    python -m pip install --index-url "$index" "$(grep -E '^torch==' requirements.txt)" && \
    python -m pip install -r requirements.txt

COPY . .
# The last build step is the fast test tier (.ci/run runs both tiers): an image that builds passes it.
RUN python -m pytest -x -m "not slow"

VOLUME ["/data"]
CMD ["python", "algorithms/mage.py", "--config", "configs/mage/tiny.yaml"]
