# One image for the sweep service (API) and the trainer (every Ray pod of a sweep: head, workers,
# the driver and the trials). Build from the repository root:
#   docker build -t ghcr.io/sweep-service/sweep-service:0.1.0 .
#
# Base: Ray's own image for the Ray we pin in pyproject.toml (ray[...]==2.60.0), Python 3.11
# (requires-python) and CUDA 13.0: torch 2.14.1's Linux wheels are the cu130 builds, which carry
# their own CUDA libraries and need a CUDA 13 driver on the GPU nodes; the cu130 base keeps the
# image's CUDA stack on the same version. Ray publishes cu130 variants of rayproject/ray for
# Python 3.10-3.14 (cu13.0.0-cudnn in its image matrix). tests/deploy/test_dockerfile.py checks
# that this tag's Ray and Python versions are the pinned ones.
FROM rayproject/ray:2.60.0-py311-cu130

# PyTorch's cu130 wheel index, if the default index serves torch 2.14.1 for another CUDA:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<index URL> .   (pip reads the variable itself)
ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

USER root
# The base image gives `ray` passwordless sudo; our pods never need it. /data: where the specs keep
# datasets (data.path: /data/...), writable by the ray user (uid 1000, group users = 100).
RUN sed -i '/^ray ALL=NOPASSWD: ALL$/d' /etc/sudoers \
    && mkdir -p /data \
    && chown 1000:100 /data
USER 1000:100
WORKDIR /home/ray/sweep-service

# Dependencies first, exactly as pyproject.toml pins them (torch, torchvision, ray[...], ...): this
# layer is rebuilt only when pyproject.toml changes, not on every source edit.
COPY --chown=1000:100 pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (service/ and trainer/; sweeps/ for `sweepctl run sweeps/...` in the image).
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 service ./service
COPY --chown=1000:100 trainer ./trainer
COPY --chown=1000:100 sweeps ./sweeps
RUN pip install --no-deps . && sweepctl validate sweeps/quickstart.yaml

# The API (the Helm chart runs the same command). KubeRay replaces the command of Ray pods.
EXPOSE 8000
CMD ["sweep-service", "--host", "0.0.0.0", "--port", "8000"]
