"""Shared fixtures: the environment every entrypoint sets, one local Ray per session, a tiny shapes world,
a random-weight teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpl.runtime import apply_env_defaults

apply_env_defaults()


@pytest.fixture(scope="session")
def shapes_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded shapes world (64 px) shared by the tests that only read it."""
    from xpl.data.shapes import synthesize

    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, seed=7, train_images=24, caption_images=40, val_images=12, shard_size=10, image_size=64)
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (~4 s to start)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def text_encoder():
    """The packaged MiniLM encoder, loaded once."""
    from xpl.text import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised teacher (64 px, MiniLM's 384-d space), exported as the teacher stage would."""
    import torch

    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN

    torch.manual_seed(0)
    return export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path_factory.mktemp("teacher") / "model.pt")
