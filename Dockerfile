# syntax=docker/dockerfile:1
# One image for every MACP process: compose runs each registry service and the edge from it with
# `python -m <module>`. Runtime dependencies only (no dev extras), installed into a venv that is
# copied into a clean stage, and run as a non-root user.

# The web console's static build (console/, Vite), from the npm lock alone; the edge serves it.
FROM node:20-slim AS console
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY console ./console
RUN npm run build:console

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/macp
ENV PATH=/opt/macp/bin:$PATH
WORKDIR /src
# Dependencies first, exactly the runtime lock (every file's hash checked, nothing resolved
# here), so the image runs the versions the suite tested and a code change reuses this layer.
COPY requirements-runtime.lock ./
RUN pip install --require-hashes --no-deps -r requirements-runtime.lock
COPY pyproject.toml ./
COPY README.md ./
COPY gen ./gen
COPY services ./services
# The Python client, which `macp demo` calls the edge through (clients/python).
COPY clients/python ./clients/python
RUN pip install --no-deps --no-build-isolation . ./clients/python

FROM python:3.11-slim
ENV PATH=/opt/macp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The home directory doubles as the working and data directory, so the default MACP_DATA_DIR
# (./.macp) is writable by the service user.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/macp --shell /usr/sbin/nologin macp
COPY --from=build /opt/macp /opt/macp
COPY --from=console /src/console/dist /opt/macp-console
ENV MACP_EDGE_CONSOLE_DIR=/opt/macp-console
USER macp
WORKDIR /var/lib/macp
CMD ["macp", "--help"]
