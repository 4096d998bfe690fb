# syntax=docker/dockerfile:1
# KiCI orchestrator image.
#   docker build -t kici-orchestrator:latest .
# (packages/orchestrator/Dockerfile is a link to this file, for the guide's -f path)
# Stage 1 builds a wheel and installs it with its dependencies into /opt/kici (a virtual environment);
# stage 2 copies only that environment onto a slim base.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies come from the committed lock (exact versions and hashes), in their own layer.
COPY requirements/runtime.lock ./requirements/runtime.lock
RUN python -m venv /opt/kici \
 && /opt/kici/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY kici_core ./kici_core
COPY kici_adapters ./kici_adapters
COPY kici_runtime ./kici_runtime
RUN /opt/kici/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/kici/bin/pip install --no-deps /wheels/kici-*.whl \
 && /opt/kici/bin/pip check

# A separate, smaller target for agents: `docker build --target agent -t kici-agent .`
FROM ${PYTHON_IMAGE} AS agent
ENV PATH=/opt/kici/bin:$PATH PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 1000 --create-home --home-dir /home/agent agent
COPY --from=build /opt/kici /opt/kici
USER agent
WORKDIR /home/agent
ENTRYPOINT ["tini", "--"]
CMD ["kici-agent"]

# The default target (last stage): the orchestrator.
FROM ${PYTHON_IMAGE} AS runtime
ARG KICI_BUILD_COMMIT=unknown
ENV PATH=/opt/kici/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KICI_BUILD_COMMIT=${KICI_BUILD_COMMIT} \
    KICI_DATA_DIR=/var/lib/kici
# nft carries the NET_ADMIN file capability: the non-root kici user gains it only when the container is
# started with --cap-add=NET_ADMIN (the auto-scaler's start-up check fails with the NET_ADMIN error otherwise).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables git tini libcap2-bin \
 && setcap cap_net_admin+ep /usr/sbin/nft \
 && apt-get purge -y libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 1000 kici \
 && useradd --system --uid 1000 --gid kici --home-dir /var/lib/kici --shell /usr/sbin/nologin kici \
 && mkdir -p /var/lib/kici /app/packages/orchestrator/dist \
 && chown -R kici:kici /var/lib/kici
COPY --from=build /opt/kici /opt/kici
COPY deploy/docker/node /usr/local/bin/node
WORKDIR /app
USER kici
EXPOSE 4000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import os,urllib.request as u;u.urlopen('http://127.0.0.1:'+os.environ.get('KICI_PORT','4000')+os.environ.get('KICI_BASE_PATH','').rstrip('/')+'/health',timeout=2)"]
ENTRYPOINT ["tini", "--"]
CMD ["kici-server"]
