# One image for the worker, the order service, the relay and the CLI commands.
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
COPY tables ./tables
COPY orders ./orders
RUN pip install . \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/data && chown app /app/data
USER app

# The worker; compose overrides the command for the order service and the relay.
ENV WEB_HOST=0.0.0.0 DATA_DIR=/app/data END_OFFSETS_FROM_FETCH=false
EXPOSE 6066 8000 8001
CMD ["faust", "--quiet", "-A", "streams", "worker", "-l", "info"]
