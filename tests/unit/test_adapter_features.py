"""Item feature store of the multimodal adapters: cache keys (weights and data invalidate, nothing else
does), memory-mapped tables, missing/unreadable/URL images, encoder errors and seeded random init.

The open_clip model is a tiny architecture registered from a JSON config written here (random init),
and the images are drawn with PIL into a temporary folder: nothing is downloaded or committed.
"""

from __future__ import annotations

import http.server
import json
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.errors import ConfigError, DataError
from benchmark.models.components import hub
from benchmark.models.components.encoders import HFTextEncoder, OpenCLIPEncoder
from benchmark.models.components.feature_store import encode_features
from benchmark.models.components.images import image_column_values, resolve_images

TINY_CLIP = "tiny-test-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(directory: Path) -> str:
    """Make open_clip know a 1-layer CLIP (16-d embeddings, 32 px images); returns its name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP


def draw_images(directory: Path, n: int, size: int = 24) -> list[str]:
    """n small PNGs (a coloured square and a bar per item); returns their file names."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        im = Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        draw = ImageDraw.Draw(im)
        draw.rectangle([i % 8, 2, i % 8 + 8, 10], fill=(255 - (37 * i) % 256, 255, 0))
        draw.line([0, size - 1 - i % size, size - 1, i % size], fill=(0, 0, 255), width=2)
        name = f"item{i}.png"
        im.save(directory / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return register_tiny_clip(tmp_path_factory.mktemp("clip_configs"))


class Counting:
    """An encoder wrapper counting how many items it encoded."""

    def __init__(self, encoder):
        self.encoder, self.texts, self.images = encoder, 0, 0
        self.kind, self.modalities = encoder.kind, encoder.modalities

    def identity(self):
        return self.encoder.identity()

    def dim(self):
        return self.encoder.dim()

    def encode_texts(self, texts):
        self.texts += len(texts)
        return self.encoder.encode_texts(texts)

    def encode_images(self, images):
        self.images += len(images)
        return self.encoder.encode_images(images)


IDS = [f"i{i}" for i in range(6)]
TEXTS = [f"Film {i} (199{i}); Drama" for i in range(6)]


# ----------------------------------------------------------------------------- cache keys


def test_cache_key_changes_with_weights_or_data_and_stays_otherwise(clip, tmp_path):
    store = tmp_path / "store"
    enc = Counting(OpenCLIPEncoder(clip, init_seed=0))
    first = encode_features("text", enc, IDS, texts=TEXTS, store_dir=store)
    assert first.facts["cache"] == "created" and enc.texts == 6
    # Nothing changed (a fresh encoder object, same weights): a hit, nothing encoded.
    again_enc = Counting(OpenCLIPEncoder(clip, init_seed=0))
    again = encode_features("text", again_enc, IDS, texts=TEXTS, store_dir=store)
    assert again.facts["cache"] == "hit" and again.facts["key"] == first.facts["key"] and again_enc.texts == 0
    assert np.array_equal(np.asarray(again.features), np.asarray(first.features))
    # Other weights (another random init): another key, encoded again.
    other_w = Counting(OpenCLIPEncoder(clip, init_seed=1))
    changed_w = encode_features("text", other_w, IDS, texts=TEXTS, store_dir=store)
    assert changed_w.facts["key"] != first.facts["key"] and changed_w.facts["cache"] == "created"
    assert other_w.texts == 6 and not np.allclose(changed_w.features, first.features)
    # Weights changed in place (same config): the digest sees it.
    tweaked = OpenCLIPEncoder(clip, init_seed=0)
    with torch.no_grad():
        next(tweaked._load()[0].parameters()).add_(1e-3)
    assert (
        encode_features("text", tweaked, IDS, texts=TEXTS, store_dir=store).facts["key"] != first.facts["key"]
    )
    # Other data: one item's text, or the item order.
    texts = [*TEXTS[:-1], "Film 5 (1995); Comedy"]
    assert encode_features("text", enc, IDS, texts=texts, store_dir=store).facts["key"] != first.facts["key"]
    swapped = encode_features("text", enc, IDS[::-1], texts=TEXTS[::-1], store_dir=store)
    assert swapped.facts["key"] != first.facts["key"]
    # The modality is part of the key too; the feature files live apart.
    assert len({p.name for p in store.iterdir()}) == 5


def test_image_cache_key_follows_the_image_bytes(clip, tmp_path):
    names = draw_images(tmp_path / "img", 4)
    enc = Counting(OpenCLIPEncoder(clip))
    src = resolve_images(names, IDS[:4], tmp_path / "img", tmp_path, strict=True)
    a = encode_features("image", enc, IDS[:4], images=src, store_dir=tmp_path / "store")
    b = encode_features("image", enc, IDS[:4], images=src, store_dir=tmp_path / "store")
    assert (a.facts["cache"], b.facts["cache"], enc.images) == ("created", "hit", 4)
    from PIL import Image

    Image.new("RGB", (24, 24), (1, 2, 3)).save(tmp_path / "img" / names[2])  # same path, new picture
    src = resolve_images(names, IDS[:4], tmp_path / "img", tmp_path, strict=True)
    c = encode_features("image", enc, IDS[:4], images=src, store_dir=tmp_path / "store")
    assert c.facts["key"] != a.facts["key"] and c.facts["cache"] == "created"
    assert np.array_equal(c.features[[0, 1, 3]], a.features[[0, 1, 3]]) and not np.allclose(
        c.features[2], a.features[2]
    )


def test_tables_are_memory_mapped_and_text_features_match_the_encoder(tmp_path):
    enc = HFTextEncoder()  # all-MiniLM-L6-v2 from its offline package
    table = encode_features("text", enc, IDS, texts=TEXTS, store_dir=tmp_path)
    hit = encode_features("text", enc, IDS, texts=TEXTS, store_dir=tmp_path)
    assert isinstance(hit.features, np.memmap) and hit.facts["cache"] == "hit"
    assert hit.features.shape == (6, 384) and not hit.features.flags.writeable
    assert np.array_equal(np.asarray(hit.features), enc.encode_texts(TEXTS))
    assert table.facts["missing"] == 0 and hit.facts["dim"] == 384
    ident = enc.identity()
    assert ident["model"] == "sentence-transformers/all-MiniLM-L6-v2" and ident["random_init"] is False
    shorter = HFTextEncoder(max_length=16)
    assert (
        encode_features("text", shorter, IDS, texts=TEXTS, store_dir=tmp_path).facts["key"]
        != table.facts["key"]
    )
    with pytest.raises(ConfigError, match="no image tower"):
        encode_features("image", enc, IDS, images=None, store_dir=tmp_path)


# ----------------------------------------------------------------------------- images


def test_missing_and_unreadable_images_are_masked_never_a_crash(clip, tmp_path):
    names = draw_images(tmp_path / "img", 6)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png at all")
    values = [names[0], "", "nowhere.png", "broken.png", str(tmp_path / "img" / names[4]), names[5]]
    src = resolve_images(values, IDS, tmp_path / "img", tmp_path, strict=False)
    assert src.status == ["ok", "empty", "not_found", "ok", "ok", "ok"]  # absolute paths work too
    table = encode_features("image", OpenCLIPEncoder(clip), IDS, images=src, store_dir=tmp_path / "store")
    assert table.missing.tolist() == [False, True, True, True, False, False]
    assert table.facts["missing_share"] == 0.5 and table.facts["unreadable"] == 1
    assert not table.features[[1, 2, 3]].any() and table.features[[0, 4, 5]].any()
    # Strict: the first bad file stops the run, in one line naming the item and the file.
    with pytest.raises(DataError, match="item i2 not found: .*nowhere.png") as e:
        resolve_images(values, IDS, tmp_path / "img", tmp_path, strict=True)
    assert len(str(e.value).splitlines()) == 1
    src = resolve_images(
        [v or names[1] for v in values[:2]] + [names[2], "broken.png"],
        IDS[:4],
        tmp_path / "img",
        tmp_path,
        strict=True,
    )
    with pytest.raises(DataError, match="item i3 cannot be decoded: .*broken.png"):
        encode_features(
            "image", OpenCLIPEncoder(clip), IDS[:4], images=src, store_dir=tmp_path / "s2", strict=True
        )
    # ...also when a lenient run stored the table before.
    encode_features("image", OpenCLIPEncoder(clip), IDS[:4], images=src, store_dir=tmp_path / "s2")
    with pytest.raises(DataError, match="cannot be decoded"):
        encode_features(
            "image", OpenCLIPEncoder(clip), IDS[:4], images=src, store_dir=tmp_path / "s2", strict=True
        )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_url_images_are_downloaded_once_and_offline_urls_are_missing(tmp_path):
    names = draw_images(tmp_path / "served", 2)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(tmp_path / "served"))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = [f"{base}/{names[0]}", f"{base}/{names[1]}?size=24", f"{base}/absent.png"]
        first = resolve_images(urls, IDS[:3], None, tmp_path / "cache", strict=False)
        assert first.downloaded == 2 and first.status == ["ok", "ok", "download_failed"]  # HTTP 404
        assert first.files[0].read_bytes() == (tmp_path / "served" / names[0]).read_bytes()
        second = resolve_images(urls[:2], IDS[:2], None, tmp_path / "cache", strict=False)
        assert second.downloaded == 0 and second.files == first.files[:2]  # from the cache
        with pytest.raises(DataError, match="item i2 from .*absent.png \\(HTTP 404\\)"):
            resolve_images(urls, IDS[:3], None, tmp_path / "other", strict=True)
    finally:
        server.shutdown()
        server.server_close()
    # No network (nothing listens on the port): the first failure marks the rest skipped, no waiting.
    dead = [f"http://127.0.0.1:{server.server_address[1]}/{n}" for n in ("a.png", "b.png")]
    src = resolve_images(dead, IDS[:2], None, tmp_path / "cache2", strict=False)
    assert src.status == ["download_failed", "download_skipped"] and src.files == [None, None]
    with pytest.raises(DataError, match="network unavailable") as e:
        resolve_images(dead, IDS[:2], None, tmp_path / "cache2", strict=True)
    assert len(str(e.value).splitlines()) == 1
    assert (
        resolve_images(dead, IDS[:2], None, tmp_path / "c3", False, download=False).status
        == ["download_skipped"] * 2
    )


def test_image_column_must_exist():
    import pandas as pd

    items = pd.DataFrame({"title": ["A", "B"]}, index=pd.Index(["i0", "i1"]))
    with pytest.raises(
        ConfigError, match="adapter.image_column: the item table has no column 'poster' \\(title\\)"
    ):
        image_column_values(items, ["i0", "i1"], "poster")
    items["poster"] = ["a.png", np.nan]
    assert image_column_values(items, ["i0", "i1", "i9"], "poster") == ["a.png", "", ""]


# ----------------------------------------------------------------------------- encoders


def test_open_clip_random_init_is_seeded_labelled_and_leaves_the_run_rng_alone(clip):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = OpenCLIPEncoder(clip, init_seed=3)
    ident = a.identity()
    a.encode_texts(["x"])
    assert torch.equal(torch.rand(3), expected)  # building and encoding drew nothing from the run's stream
    assert ident["random_init"] is True and ident["pretrained"] is None and ident["init_seed"] == 3
    b = OpenCLIPEncoder(clip, init_seed=3)
    assert b.identity()["weights_sha256"] == ident["weights_sha256"]
    assert np.array_equal(a.encode_texts(TEXTS), b.encode_texts(TEXTS))


def test_open_clip_bad_names_and_offline_tags_are_one_line_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="open_clip does not know 'ViT-Q-99'"):
        OpenCLIPEncoder("ViT-Q-99")
    with pytest.raises(ConfigError, match="'nope' is not a tag of ViT-B-32 \\(openai, "):
        OpenCLIPEncoder("ViT-B-32", pretrained="nope")
    monkeypatch.setattr(hub, "reachable", lambda host, **kw: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    enc = OpenCLIPEncoder("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert enc.random_init is False
    with pytest.raises(
        ConfigError, match="cannot download open_clip weights .*unreachable.*pretrained=null"
    ) as e:
        enc.identity()
    assert len(str(e.value).splitlines()) == 1
