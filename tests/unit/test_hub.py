"""Hub names out of reach: the local hub cache at once, or one line naming why (no retry back-off)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.errors import ConfigError
from benchmark.models.components import hub
from tests.unit.test_tallrec import make_tiny_lm


@pytest.fixture
def no_hub(monkeypatch):
    """A process whose hub host does not answer; any download attempt fails the test."""
    import huggingface_hub.file_download as fd

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "reachable", lambda host, **kw: False)

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted although it is out of reach")

    monkeypatch.setattr(fd, "get_hf_file_metadata", no_network)
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache folder in place of the user's."""
    import huggingface_hub.constants as constants

    root = tmp_path / "hub-cache"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def cache_copy(root: Path, repo: str, folder: Path) -> None:
    """Place ``folder``'s files as the hub cache's snapshot of ``repo`` (main revision)."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)


def test_reachability_follows_the_environment_and_the_host(monkeypatch):
    monkeypatch.setattr(hub, "reachable", lambda host, **kw: host == "mirror.example")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/prefix")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.hub_reachable.cache_clear()
    assert hub.hub_host() == "mirror.example"
    missing = OSError("not found\nmore detail")
    assert hub.hub_reachable() and hub.hub_load_kwargs() == {}
    assert hub.load_failure(missing, hub_name=True) == "not found"  # the hub answered: its own reason
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    assert not hub.hub_reachable()
    assert hub.hub_load_kwargs() == {"local_files_only": True}
    assert hub.load_failure(missing, hub_name=True) == (
        "not found; HF_HUB_OFFLINE is set and no copy in the local hub cache"
    )
    assert hub.load_failure(missing, hub_name=False) == "not found"  # a local folder: nothing about the hub
    assert hub.load_failure(OSError(), hub_name=False) == "OSError"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_ENDPOINT")
    hub.hub_reachable.cache_clear()
    assert hub.hub_host() == "huggingface.co" and not hub.hub_reachable()
    assert "; huggingface.co unreachable and no copy" in hub.load_failure(missing, hub_name=True)
    hub.hub_reachable.cache_clear()


def test_unknown_hub_names_fail_in_one_line_without_contacting_the_hub(no_hub, hub_cache):
    from benchmark.models.components.backbones import pretrained_backbone
    from benchmark.models.components.llm import load_causal_lm
    from benchmark.models.components.text_encoder import _load

    cases = [
        (lambda: pretrained_backbone("no-org/no-such-model", "fp32", "cpu", None), "model backbone"),
        (lambda: load_causal_lm("no-org/no-such-model", "fp32", "cpu", None), "model backbone"),
        (lambda: _load("no-org/no-such-encoder"), "text encoder"),
    ]
    for load, what in cases:
        with pytest.raises(ConfigError) as e:
            load()
        text = str(e.value)
        assert text.startswith(f"{what}: cannot load 'no-org/no-such-")
        assert "huggingface.co unreachable and no copy in the local hub cache" in text
        assert len(text.splitlines()) == 1


def test_a_cached_hub_model_loads_without_the_hub(no_hub, hub_cache, tmp_path):
    from benchmark.models.components.backbones import pretrained_backbone

    cache_copy(hub_cache, "some-org/tiny-lm", make_tiny_lm(tmp_path / "lm", ["a film about cats"]))
    backbone = pretrained_backbone("some-org/tiny-lm", "fp32", "cpu", None)
    assert backbone.kind == "causal"
    assert backbone.facts["source"] == "hub" and backbone.facts["backbone"] == "some-org/tiny-lm"
    assert backbone.model.config.num_hidden_layers == 2
