"""The peers' noop apps for ``python -m bench peers``: one module per library, configured by env.

``BENCH_REDIS_URL`` names the bench's Redis; ``BENCH_CONCURRENCY`` the jobs a worker
process runs at once. Each module documents the settings it uses and why.
"""

import os

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
