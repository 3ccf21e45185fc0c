"""Shared fixtures. Real-model fixtures load once per test session (mark the tests that use them slow)."""

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) for SmolLM2-135M, shared by the whole session: READ-ONLY.

    Tests that modify weights (quantizers) should take `smollm2_fresh` instead.
    """
    from qviz.models import load_model

    return load_model("smollm2-135m", fresh=False)


@pytest.fixture
def smollm2_fresh(smollm2):
    """(model, tokenizer): an independent deep copy of SmolLM2-135M that a test may modify."""
    from qviz.models import load_model

    return load_model("smollm2-135m", fresh=True)


def pytest_collection_modifyitems(config, items):
    """The browser tests last: by then the notebook tests have filled the notebooks' result caches, so Run All in
    the browser reads them instead of computing the same whole-model results a second time."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
