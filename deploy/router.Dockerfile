# syntax=docker/dockerfile:1
# The inference router (`python -m router`). Build from the repository root:
#   docker build -f deploy/router.Dockerfile -t registry.example.com/inference-router:0.1.0 .
# deploy/router.Dockerfile.dockerignore keeps the build context to the files copied below.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# Builder: install the project and its dependencies into a self-contained venv. Every dependency
# ships manylinux wheels, so no compiler is needed here either; the final stage gets only the venv.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router/ router/
COPY node_protocol/ node_protocol/
COPY node_agent/ node_agent/
COPY bench/ bench/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="inference-router" \
      org.opencontainers.image.description="One OpenAI-compatible endpoint in front of a fleet of LLM inference nodes"
# Bytecode is compiled in the builder; the root filesystem is read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROUTER_PORT=8080
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin router
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
# Liveness only (the process answers); /ready is the readiness signal for load balancers.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ROUTER_PORT', '8080') + '/health', timeout=2)"]
ENTRYPOINT ["python", "-m", "router"]
