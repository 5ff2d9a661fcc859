"""FastAPI, imported for a short cold start. The app imports FastAPI from here, never directly.

Two cuts, each guarded so that a FastAPI or pydantic release without the internal it touches just
imports FastAPI the ordinary way (recheck both whenever those pins move):

- FastAPI defines some 40 pydantic models for the OpenAPI document at import time, and pydantic
  builds each model's validator as its class is created: ≈60 ms of every cold start, for a document
  only ``/openapi.json`` and ``/docs`` ever need. They are imported with pydantic's own
  ``defer_build`` switched on, so each builds on its first use instead. The default is restored
  straight after, and this package's models are built as usual.
- FastAPI asks of every response model "is this a pydantic.v1 model?" (only to refuse one) by
  importing ``pydantic.v1``: 25-40 ms for a module we never use. A v1 model cannot exist before
  ``pydantic.v1`` is imported, so the answer is "no" until it is; after that FastAPI's own check runs.
"""

from __future__ import annotations

import sys
from typing import Any


def _import_fastapi_deferred() -> bool:
    """Import FastAPI with pydantic model builds deferred; True when the deferral applied."""
    if "fastapi" in sys.modules:
        return False
    try:
        from pydantic._internal._config import config_defaults
    except ImportError:  # pragma: no cover - a pydantic without the internal: import as usual
        return False
    if config_defaults.get("defer_build") is not False:  # pragma: no cover - unknown shape: leave it alone
        return False
    config_defaults["defer_build"] = True
    try:
        import fastapi.applications  # noqa: F401  (pulls in routing, params and openapi.models)
    finally:
        config_defaults["defer_build"] = False
    return True


DEFERRED = _import_fastapi_deferred()


def _lean_pydantic_v1_probe() -> None:
    from fastapi import encoders
    from fastapi._compat import shared

    is_class = getattr(shared, "is_pydantic_v1_model_class", None)
    is_instance = getattr(shared, "is_pydantic_v1_model_instance", None)
    if is_class is None or is_instance is None or getattr(is_class, "_lean", False):
        return

    def lean_class(cls: Any) -> bool:
        return "pydantic.v1" in sys.modules and is_class(cls)

    def lean_instance(obj: Any) -> bool:
        return "pydantic.v1" in sys.modules and is_instance(obj)

    lean_class._lean = True  # type: ignore[attr-defined]
    shared.is_pydantic_v1_model_class = lean_class  # annotation_is_pydantic_v1 looks it up here
    shared.is_pydantic_v1_model_instance = lean_instance
    if getattr(encoders, "is_pydantic_v1_model_instance", None) is is_instance:
        encoders.is_pydantic_v1_model_instance = lean_instance


_lean_pydantic_v1_probe()

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402

__all__ = ["DEFERRED", "FastAPI", "HTMLResponse", "JSONResponse", "Request", "RequestValidationError"]
