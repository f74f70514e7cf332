"""jobstream's web API, for a host app that serves it (mounted, or as its own server).

``create_app(settings, authenticate=...)`` builds the Litestar app; mount it anywhere
(``FastAPI().mount("/api", create_app())``) and either chain its lifespan into the host's
(``async with api.lifespan(): yield``) or let it open its resources on the first request
and close them with :func:`close_resources` at the host's shutdown. :func:`jobstream_of`
hands the host's own endpoints the app's ``Jobstream`` (one Redis pool per process). ``authenticate`` is the
host's own way of knowing the caller: a function (sync or async) from the connection to a
:class:`User` or None.
"""

from web.app import create_app
from web.auth import Authenticate, User
from web.resources import close_resources, jobstream_of

__all__ = ["Authenticate", "User", "close_resources", "create_app", "jobstream_of"]
