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
# UV_COMPILE_BYTECODE compiles the dependencies only; the app's own modules are compiled here,
# since the image runs as nobody, who could not write their __pycache__ (a worker would then
# compile about forty modules at every start).
RUN python -m compileall -q broker web workers scheduler hub cli client devtools
USER nobody
EXPOSE 8000
CMD ["uvicorn", "web.app:app", "--host", "0.0.0.0", "--port", "8000"]
