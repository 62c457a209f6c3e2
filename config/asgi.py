"""ASGI entry point: the web server runs under ASGI so token streams (SSE) do not hold threads."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_asgi_application()
