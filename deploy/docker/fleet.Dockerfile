# The fleet manager (REST API, dashboard, artifacts, MQTT). It needs no torch and no model:
# paho-mqtt and cryptography come with the package, FastAPI, uvicorn and prometheus-client
# with the `edge` extra. Build from the repository root:
#   docker build -f deploy/docker/fleet.Dockerfile -t edgecloud-fleet .
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
RUN pip install "$(grep -o 'grpcio-tools==[0-9.]*' pyproject.toml)" \
    && python proto/build.py \
    && pip install '.[edge]' \
    && ! pip show torch >/dev/null 2>&1

FROM python:3.11-slim
RUN groupadd --system --gid 10001 edgecloud \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgecloud --create-home edgecloud
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/edgecloud
# fleet.sqlite3 and the artifact folder are the fleet's whole state: one volume, one writer.
VOLUME /var/lib/edgecloud
EXPOSE 8090
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]
# Site flags go after the image name and replace CMD; --public-url must be the address the
# devices download artifacts from (the default would be http://0.0.0.0:8090).
ENTRYPOINT ["edgecloud", "fleet", "serve", "--host", "0.0.0.0", "--port", "8090", \
            "--store", "/var/lib/edgecloud/fleet.sqlite3", "--artifacts", "/var/lib/edgecloud/artifacts"]
CMD ["--broker", "mqtt:8883", "--public-url", "http://fleet:8090", "--api-key-file", "/run/secrets/fleet-api-key", \
     "--mqtt-username", "fleet-manager", "--mqtt-password-file", "/run/secrets/mqtt-password", \
     "--mqtt-ca", "/run/secrets/mqtt-ca.crt", "--trust", "/run/secrets/bundle-signing.pub", \
     "--command-key", "/run/secrets/fleet-commands.key"]
