# The cloud Reasoner (gRPC). Build from the repository root:
#   docker build -f deploy/docker/cloud.Dockerfile -t edgecloud-cloud .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU wheel first, from PyTorch's index: from PyPI, torch brings the CUDA build and
# several GB of NVIDIA libraries. "2.13.0+cpu" then satisfies the extra's torch==2.13.0.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgecloud edgecloud
COPY shared shared
COPY cloud cloud
COPY edge edge
COPY proto proto
# setuptools maps each folder into the edgecloud namespace; the install needs all of them.
COPY fleet fleet
COPY modelkit modelkit
COPY demo demo
COPY tasks tasks
# The gRPC stubs are build output, not in git, and must exist before the wheel is built;
# grpcio-tools is taken at the version pyproject.toml pins.
RUN pip install "$(grep -o 'grpcio-tools==[0-9.]*' pyproject.toml)" \
    && python proto/build.py \
    && pip install '.[cloud]'

FROM python:3.11-slim
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud --create-home edgecloud
COPY --from=build /opt/venv /opt/venv
COPY models/cloud-teacher /opt/edgecloud/models/cloud-teacher
# Offline: the model is in the image, and nothing may be fetched from the Hub at run time.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf
USER 10001:10001
WORKDIR /var/lib/edgecloud
# The session store: mount a volume here, or sessions die with the container.
VOLUME /var/lib/edgecloud
EXPOSE 50051 9100
# Plaintext health check: with --tls-cert the check needs TLS too (replace it, or rely on the
# orchestrator's probes). NOT_SERVING while the model loads and while draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(service='edgecloud.v1.Reasoner'), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
# What the container fixes (address, paths); CMD holds what a site overrides. Listening on
# 0.0.0.0 makes device tokens mandatory: mount {"device-id": "token"} JSON at the path below.
# Tokens over plaintext gRPC off loopback are refused unless --allow-plaintext-tokens: keep it
# only where TLS ends in front of the container; else pass --tls-cert/--tls-key and drop it.
# Prometheus on 9100 for scrapers outside the container (it carries no secrets).
ENTRYPOINT ["edgecloud", "cloud", "serve", "--host", "0.0.0.0", "--port", "50051", \
            "--model", "/opt/edgecloud/models/cloud-teacher", "--store", "/var/lib/edgecloud/cloud-sessions.sqlite3"]
CMD ["--tokens", "/run/secrets/edgecloud-tokens.json", "--allow-plaintext-tokens", "--device", "cpu", \
     "--metrics-port", "9100", "--metrics-host", "0.0.0.0", "--grace", "20"]
