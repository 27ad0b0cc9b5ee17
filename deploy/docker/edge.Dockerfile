# The edge daemon, without torch (onnxruntime only). Build from the repository root:
#   docker build -f deploy/docker/edge.Dockerfile -t edgecloud-edge .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
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
# The gRPC stubs are build output, not in git, and must exist before the wheel is built.
RUN pip install "$(grep -o 'grpcio-tools==[0-9.]*' pyproject.toml)" \
    && python proto/build.py \
    && pip install '.[edge]' \
    && ! pip show torch >/dev/null 2>&1

FROM python:3.11-slim
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud --create-home edgecloud
COPY --from=build /opt/venv /opt/venv
COPY models/edge-student /opt/edgecloud/models/edge-student
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/edgecloud
# The outbox (accepted escalations) and the agent's installed bundles: keep them on a volume.
VOLUME /var/lib/edgecloud
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
# Reachable from outside the container, so an API key is required: mount it at the path
# below. Add --cloud, --broker, --mqtt-* ... after the image name (they replace CMD); --broker needs
# --trust and --trust-commands (the fleet manager's command key) too.
ENTRYPOINT ["edgecloud", "edge", "serve", "--host", "0.0.0.0", "--port", "8080", \
            "--outbox", "/var/lib/edgecloud/outbox.sqlite3", "--agent-state", "/var/lib/edgecloud/agent"]
CMD ["--bundle", "/opt/edgecloud/models/edge-student", "--api-key-file", "/run/secrets/edge-api-key"]
