# One image for every role: web, worker, scheduler (compose.yaml picks the command).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 PATH="/app/.venv/bin:$PATH"
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY broker broker
COPY web web
COPY workers workers
COPY scheduler scheduler
COPY hub hub
COPY cli cli
COPY client client
COPY devtools devtools
RUN uv sync --frozen --no-dev
USER nobody
EXPOSE 8000
CMD ["uvicorn", "web.app:app", "--host", "0.0.0.0", "--port", "8000"]
