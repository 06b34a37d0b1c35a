"""Service settings: one pydantic-settings object read from CHROMIFY_* (and Vertex AI's AIP_*) variables."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """What `chromify serve` needs; command-line options override the environment."""

    model_config = SettingsConfigDict(env_prefix="CHROMIFY_", extra="ignore", populate_by_name=True)

    model: str = Field("champion", description="Registry alias, version, or model directory.")
    params: str = "params.yaml"
    host: str = "127.0.0.1"
    # Vertex AI tells a custom container its port and routes through AIP_*; ours win only when those are unset.
    port: int = Field(8080, validation_alias=AliasChoices("AIP_HTTP_PORT", "CHROMIFY_PORT"))
    predict_route: str = Field("/predict", validation_alias=AliasChoices("AIP_PREDICT_ROUTE",
                                                                         "CHROMIFY_PREDICT_ROUTE"))
    health_route: str = Field("/healthz", validation_alias=AliasChoices("AIP_HEALTH_ROUTE", "CHROMIFY_HEALTH_ROUTE"))
    render_size: int | None = Field(None, ge=16, description="Model input short side (px); default: the model's.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    # Refused from the header, before decoding; 40 MP costs ~240 MB at the peak (RGB in + RGB out + encoder).
    max_pixels: int = Field(40_000_000, gt=0)
    # Photos colorized at once; the rest wait in line. Memory grows with this, not with the number of clients.
    # Each job gets cores // concurrency torch threads: on 2 shared cores, one thread per job measured 80 ms for
    # the model where two OpenMP threads swung from 42 to 600 ms whenever a neighbour process took a core.
    concurrency: int = Field(2, ge=1)
    # Requests waiting beyond `concurrency`; past it the answer is 503 + Retry-After instead of unbounded queueing.
    max_queue: int = Field(64, ge=0)
    max_instances: int = Field(8, ge=1, description="Images per Vertex AI prediction request.")
    torch_threads: int = Field(0, ge=0, description="0: torch's default (one per core).")
    log_level: str = "info"
