"""Shared fixtures: the environment every entrypoint sets, one local Ray per session, a tiny shapes world,
remote-like shard streams,
a random-weight teacher."""

from __future__ import annotations

import io
from pathlib import Path

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

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

    from xpl.ray_cluster import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def text_encoder():
    """The packaged MiniLM encoder, loaded once."""
    from xpl.text import TextEncoder

    return TextEncoder()


class _Stream(io.RawIOBase):
    """A forward-only stream, like an object store's: no seeking; optionally the connection drops
    (OSError) after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int | None) -> None:
        self.data, self.pos, self.fail_after = data, 0, fail_after

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        end = len(self.data) if self.fail_after is None else min(len(self.data), self.fail_after)
        chunk = self.data[self.pos : min(end, self.pos + len(buffer))]
        buffer[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


class StreamFS(AbstractFileSystem):
    """`stream://name`: in-process remote shards with streaming semantics (see `_Stream`)."""

    protocol = "stream"
    files: dict[str, tuple[bytes, int | None]] = {}

    def _open(self, path, mode="rb", **kwargs):
        name = self._strip_protocol(path).strip("/")
        if name not in self.files:
            raise FileNotFoundError(path)
        return io.BufferedReader(_Stream(*self.files[name]))


@pytest.fixture
def stream_shard():
    """Put bytes behind a `stream://` URL (optionally dropping the connection after N bytes); returns the URL."""
    fsspec.register_implementation("stream", StreamFS, clobber=True)

    def put(name: str, data: bytes, fail_after: int | None = None) -> str:
        StreamFS.files[name] = (data, fail_after)
        return f"stream://{name}"

    yield put
    StreamFS.files.clear()


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised teacher (64 px, MiniLM's 384-d space), exported as the teacher stage would."""
    import torch

    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN

    torch.manual_seed(0)
    return export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path_factory.mktemp("teacher") / "model.pt")
