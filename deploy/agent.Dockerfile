# syntax=docker/dockerfile:1
# The node agent (`python -m node_agent`), run beside an inference backend. Build from the
# repository root:
#   docker build -f deploy/agent.Dockerfile -t registry.example.com/inference-router-agent:0.1.0 .
# deploy/agent.Dockerfile.dockerignore keeps the build context to the files copied below.

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
LABEL org.opencontainers.image.title="inference-router-agent" \
      org.opencontainers.image.description="Node agent: thin proxy and load reporter beside an LLM inference backend"
# Bytecode is compiled in the builder; the root filesystem is read-only at run time.
# NODE_AGENT_PORT doubles as the agent's --port setting (default 8090).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NODE_AGENT_PORT=8090
RUN groupadd --system --gid 10001 agent \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin agent
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8090
# The agent's /health is the seed's: 200 only while the backend answers, so "unhealthy" here
# means "this node cannot serve", not "restart the agent".
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NODE_AGENT_PORT', '8090') + '/health', timeout=2)"]
ENTRYPOINT ["python", "-m", "node_agent"]
