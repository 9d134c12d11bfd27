"""The console's jinja2 templates (``templates/``), with the globals every page uses."""

from __future__ import annotations

from pathlib import Path

from starlette.templating import Jinja2Templates

from ._auth import csrf_token

TEMPLATES = Path(__file__).parent / "templates"

templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.globals["csrf_token"] = csrf_token
