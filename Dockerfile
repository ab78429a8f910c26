# pakit-stream: the daemon, CPU torch by default.
#   docker build -t pakit-stream .
# CUDA variant (retraining on an NVIDIA GPU; run with --gpus all):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t pakit-stream:cuda .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pakit_stream ./pakit_stream
# torch first, from the chosen index: an unpinned or PyPI torch would pull a multi-GB CUDA build
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data pakit \
    && mkdir -p /data /keys && chown pakit /data /keys && chmod 700 /keys

USER pakit
# inside a container the server must listen beyond loopback to be published; publish the port
# on 127.0.0.1 of the host (see docker-compose.yml) unless it is meant to be reachable
# the checkpoints' signing key lives apart from the checkpoints (or comes in PAKIT_STREAM_STATE_KEY)
ENV PAKIT_STREAM_DATA_DIR=/data \
    PAKIT_STREAM_STATE_KEY_FILE=/keys/state.key \
    PAKIT_STREAM_WEB_HOST=0.0.0.0 \
    PAKIT_STREAM_WEB_PORT=6066
EXPOSE 6066
VOLUME ["/data", "/keys"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=4)"]
ENTRYPOINT ["pakit-stream"]
CMD ["run"]
