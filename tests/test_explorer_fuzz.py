"""Fuzz the explorer's API from its own `/openapi.json` with schemathesis: zero server errors.

Schemathesis reads the schema the app publishes and generates requests for every operation, both
valid ones and ones that break the schema (wrong types, out-of-range numbers, missing fields,
odd strings); every response must be a non-5xx. The app runs in-process (ASGI, no socket) on a
small untrained VAE: fuzzing exercises request handling, not what the model has learnt.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from vaelab.config import ModelConfig  # noqa: E402
from vaelab.data.base import Split  # noqa: E402
from vaelab.explorer import create_app  # noqa: E402
from vaelab.models import VAE  # noqa: E402


def _explorer_app():
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden=[16, 8], latent_dim=3, image_shape=[1, 28, 28])).eval()
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (40,), generator=generator))
    return create_app(model, split=split, class_names=[str(d) for d in range(10)])


# Built at import (schemathesis parametrizes from the schema at collection); the model is tiny.
schema = schemathesis.openapi.from_asgi("/openapi.json", _explorer_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error])
