"""Base for the typed options each operator owns (the pipeline config composes them)."""

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Options of one operator: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
