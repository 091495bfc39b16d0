"""Saving a model and loading it back, as a user's file would."""

from __future__ import annotations

import io

import torch


def round_trip(model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """``model`` written by ``torch.jit.save`` and read back by ``torch.jit.load``."""
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)
