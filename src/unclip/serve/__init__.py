"""Web app and HTTP API: ``unclip serve --model DIR|NAME``.

``create_app(pipeline, model_ref=..., config=ServeConfig())`` builds a FastAPI
app around one loaded pipeline; see ``docs/serve.md`` for the endpoints.
FastAPI and uvicorn are the optional ``serve`` extra, imported only here.
"""

from unclip.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name):
    if name == "create_app":  # imported lazily: fastapi is an optional dependency
        from unclip.serve.app import create_app

        return create_app
    raise AttributeError(name)
