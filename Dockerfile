# The fluxhost server image: the API (`fluxhost serve`) and the GPU worker (`fluxhost worker`).
# The base brings torch with CUDA; pip keeps it and adds the rest of the server.
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[server]'
ENV FLUXHOST_HOST=0.0.0.0 FLUXHOST_DATA_DIR=/data HF_HOME=/data/huggingface
VOLUME /data
EXPOSE 8000
CMD ["fluxhost", "serve"]
