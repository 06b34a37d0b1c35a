"""Service settings: one pydantic-settings object read from CHROMIFY_* (and Vertex AI's AIP_*) variables.

A value that would fail later (a port past 65535, an unknown log level, a route without its slash) is a pydantic
ValidationError naming the field here, before the model loads, not a traceback from uvicorn, torch or a request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """What `chromify serve` needs; command-line options override the environment."""

    model_config = SettingsConfigDict(env_prefix="CHROMIFY_", extra="ignore", populate_by_name=True)

    model: str = Field("champion", description="Registry alias, version, or model directory.")
    params: str = "params.yaml"
    host: str = "127.0.0.1"
    # Vertex AI tells a custom container its port and routes through AIP_*; ours win only when those are unset.
    port: int = Field(8080, ge=1, le=65535, validation_alias=AliasChoices("AIP_HTTP_PORT", "CHROMIFY_PORT"))
    predict_route: str = Field("/predict", validation_alias=AliasChoices("AIP_PREDICT_ROUTE",
                                                                         "CHROMIFY_PREDICT_ROUTE"))
    health_route: str = Field("/healthz", validation_alias=AliasChoices("AIP_HEALTH_ROUTE", "CHROMIFY_HEALTH_ROUTE"))
    # Every photo is resized to this short side for the model, small ones up: far past any training size it only
    # costs memory. The bound is chromify.inference.MAX_RENDER_SIZE (not imported: it would load torch here).
    render_size: int | None = Field(None, ge=16, le=1024,
                                    description="Model input short side (px); default: the model's.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    # A connection that has not sent a whole request head by then, or that stops this long inside a body, is
    # closed: idle or half-sent ones counted against the connection limit for good (uvicorn times a connection
    # out only after a response).
    request_head_timeout_s: float = Field(10.0, gt=0, le=600)
    # Refused from the header, before decoding; 40 MP costs ~240 MB at the peak (RGB in + RGB out + encoder).
    max_pixels: int = Field(40_000_000, gt=0)
    # Photos colorized at once; the rest wait in line (uploads on disk, /predict's JSON in memory): memory grows
    # with this and, for /predict, with max_queue, not with the number of clients.
    # Each job gets cores // concurrency torch threads: on 2 shared cores, one thread per job measured 80 ms for
    # the model where two OpenMP threads swung from 42 to 600 ms whenever a neighbour process took a core.
    concurrency: int = Field(2, ge=1)
    # Requests waiting beyond `concurrency`; past it the answer is 503 + Retry-After instead of unbounded queueing.
    max_queue: int = Field(64, ge=0)
    max_instances: int = Field(8, ge=1, description="Images per Vertex AI prediction request.")
    torch_threads: int = Field(0, ge=0, le=1024, description="0: cores // concurrency.")
    # uvicorn's names; an unknown one would be a KeyError from inside uvicorn.
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("predict_route", "health_route")
    @classmethod
    def _absolute(cls, route: str) -> str:
        if not route.startswith("/"):  # FastAPI takes it, and then it never matches: every health check fails
            raise ValueError(f"a route must start with '/', got {route!r}")
        return route

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level  # uvicorn lowercases too: INFO works there
