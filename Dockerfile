# Every packaged connector in one image; the first argument picks the broker:
#
#   docker build -t aioconnector:0.1.0 .
#   docker run --rm -e gateway_url=http://gateway.openfaas:8080 -e nats_url=nats://nats:4222 \
#       aioconnector:0.1.0 nats --stream EVENTS --subjects 'events.>'
#
# Configuration is by environment variables (or flags): `docker run --rm aioconnector:0.1.0
# nats --help` lists them; Kubernetes manifests are in examples/deploy/.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# What the build backend needs (pyproject.toml names README.md and LICENSE), nothing else.
WORKDIR /build
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# [all]: the client of every broker `aioconnector connect` knows; [prometheus]: /metrics.
RUN pip install ".[all,prometheus]" \
    && rm -rf /build \
    && groupadd --system --gid 10001 connector \
    && useradd --system --uid 10001 --gid connector --no-create-home --home-dir /nonexistent connector

# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["aioconnector", "connect"]
CMD ["--help"]
