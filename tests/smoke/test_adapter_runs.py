"""``llm4rec run`` with multimodal item adapters (in-process): the documented command lines compose
(both spellings of the nested encoder group), the modality ablation sweep composes, ``adapter=none``
keeps config hashes, an adapter without modalities reproduces the plain run bit for bit, the image
path runs end to end on a synthetic image dataset (PIL images written here, tiny random open_clip),
and bad adapter input is a one-line error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmark.compose import check_config, compose, expand_sweeps, nested_group_overrides
from benchmark.results.identity import config_hashes, model_label
from benchmark.results.record import load_record
from tests.conftest import random_rows
from tests.smoke.test_cli import assert_metrics_recompute, llm4rec, runs, tiny_args
from tests.smoke.test_p5 import TINY
from tests.unit.test_adapter_features import draw_images, register_tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS = 40
DOCUMENTED = [
    "adapter=clip_proj",
    "adapter.encoder=open_clip",
    "adapter.encoder.model=ViT-B-32",
    "adapter.encoder.pretrained=laion2b_s34b_b79k",
    "adapter.modalities=[image,text]",
]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """A 30-user x 40-item atomic dataset whose item table has an ``image`` column of PNG paths:
    item 0 has no value, item 1 a missing file, item 2 a file that is no image."""
    d = tmp_path_factory.mktemp("imgdata")
    names = draw_images(d / "images", N_ITEMS)
    (d / "images" / "broken.png").write_bytes(b"\x89PNG but not really")
    rows = random_rows(n_users=30, n_items=N_ITEMS, per_user=8, seed=5)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows]
    (d / "img.inter").write_text("\n".join(lines) + "\n")
    images = {0: "", 1: "images/gone.png", 2: "images/broken.png"}
    items = ["item_id:token\ttitle:token_seq\timage:token"]
    items += [f"i{i}\tPicture {i}\t{images.get(i, 'images/' + names[i])}" for i in range(N_ITEMS)]
    (d / "img.item").write_text("\n".join(items) + "\n")
    register_tiny_clip(tmp_path_factory.mktemp("clip_configs"))
    return d


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """One feature store for the runs of this module (a second run finds the first one's features)."""
    return tmp_path_factory.mktemp("adapter_cache")


def image_args(image_dir: Path, tmp_path: Path, cache: Path) -> list[str]:
    return [
        "data=atomic",
        f"data.path={image_dir}",
        "data.name=img",
        "logger=none",
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
        "trainer.enable_progress_bar=false",
        f"adapter.cache_dir={cache}",
    ]


# ----------------------------------------------------------------------------- composition


# The protocol each model is documented with (TALLRec scores pairs: eval=full is refused).
PROTOCOL = {"p5": [], "tallrec": ["split=tallrec_movie", "eval=labeled"]}


@pytest.mark.parametrize("model", ["p5", "tallrec"])
def test_documented_command_composes_in_both_spellings(model):
    dotted = compose([f"model={model}", *PROTOCOL[model], *DOCUMENTED])
    slashed = compose(
        [f"model={model}", *PROTOCOL[model], *[o.replace("adapter.encoder=", "adapter/encoder=") for o in DOCUMENTED]]
    )
    assert dotted == slashed
    enc = dotted.adapter.encoder
    assert (
        enc._target_.endswith("OpenCLIPEncoder")
        and enc.model == "ViT-B-32"
        and enc.pretrained == "laion2b_s34b_b79k"
    )
    assert list(dotted.adapter.modalities) == ["image", "text"] and dotted.adapter.k == 2
    check_config(dotted)
    assert model_label(dotted).endswith("+clip_proj-image-text-ViT-B-32")
    # Defaults: MiniLM text features, an MLP projector; the other projectors by name.
    plain = compose([f"model={model}", "adapter=clip_proj"])
    assert plain.adapter.encoder._target_.endswith("HFTextEncoder") and list(plain.adapter.modalities) == [
        "text"
    ]
    for name, cls in (("linear", "LinearProjector"), ("resampler", "ResamplerProjector")):
        assert compose(
            [f"model={model}", "adapter=clip_proj", f"adapter.projector={name}"]
        ).adapter.projector._target_.endswith(cls)
    # Options that are not nested groups are left alone.
    assert nested_group_overrides(["model.indexing=title", "adapter.k=4", "hydra/launcher=joblib"]) == [
        "model.indexing=title",
        "adapter.k=4",
        "hydra/launcher=joblib",
    ]


def test_ablation_sweep_composes_one_job_per_modality_set_and_indexing():
    sweep = [
        "model=p5",
        "adapter=clip_proj",
        "adapter.encoder=open_clip",
        "adapter.modalities=[],[text],[image],[image,text]",
        "model.indexing=collaborative,title",
    ]
    combos = expand_sweeps(nested_group_overrides(sweep))
    assert len(combos) == 8
    cfgs = [compose(c) for c in combos]
    for cfg in cfgs:
        check_config(cfg)
    assert sorted({tuple(c.adapter.modalities) for c in cfgs}) == [
        (),
        ("image",),
        ("image", "text"),
        ("text",),
    ]
    assert len({config_hashes(c)[0] for c in cfgs}) == 8  # the adapter is part of the config hash
    assert len({model_label(c) for c in cfgs}) == 8


def test_adapter_none_keeps_config_hashes_and_labels():
    cfg = compose(["model=p5"])
    assert cfg.adapter.name == "none"
    from omegaconf import OmegaConf

    old = OmegaConf.to_container(cfg)
    del old["adapter"]  # a config from before adapters existed (committed records)
    before = OmegaConf.create(old)
    assert config_hashes(cfg) == config_hashes(before) and model_label(cfg) == "p5-collaborative"
    assert config_hashes(
        compose(["model=p5", "adapter=clip_proj", "adapter.modalities=[]"])
    ) != config_hashes(cfg)
    # Where features are cached is no part of a result; what is encoded is.
    clip = ["model=p5", "adapter=clip_proj"]
    assert config_hashes(compose([*clip, "adapter.cache_dir=/elsewhere"])) == config_hashes(compose(clip))
    assert config_hashes(compose([*clip, "adapter.k=3"])) != config_hashes(compose(clip))


def test_bad_adapter_input_is_a_one_line_error(image_dir, feature_cache, tmp_path, capsys):
    args = [*TINY, *image_args(image_dir, tmp_path, feature_cache)]
    bad = [
        (["adapter=clip_proj", "adapter.modalities=[audio]"], "unknown modality 'audio'"),
        (["adapter=clip_proj", "adapter/projector=transformer"], "adapter/projector/transformer"),
        (
            [
                "adapter=clip_proj",
                "adapter.image_column=poster",
                "adapter.modalities=[image]",
                "adapter.encoder=open_clip",
            ],
            "poster",
        ),
        (["adapter=clip_proj", "adapter.modalities=[image]"], "encoder 'hf' has no image tower"),
        (
            [
                "adapter=clip_proj",
                "adapter.encoder=open_clip",
                "adapter.encoder.model=tiny-test-clip",
                "adapter.modalities=[image]",
                "adapter.strict_images=true",
            ],
            "item i1 not found: .*gone.png",
        ),
    ]
    for extra, message in bad:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            llm4rec("run", *args, *extra)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert re.search(message, err), err
    with pytest.raises(SystemExit):
        llm4rec("run", "model=pop", "adapter=clip_proj", *tiny_args(image_dir, tmp_path))
    assert "model pop takes no item adapter" in capsys.readouterr().err
    assert runs(tmp_path) == []


# ----------------------------------------------------------------------------- runs


def test_image_adapter_runs_end_to_end_on_synthetic_images(image_dir, feature_cache, tmp_path):
    adapter = [
        "adapter=clip_proj",
        "adapter.encoder=open_clip",
        "adapter.encoder.model=tiny-test-clip",
        "adapter.modalities=[image,text]",
        "adapter.projector=resampler",
    ]
    args = [*TINY, "model.indexing=sequential", *adapter, *image_args(image_dir, tmp_path, feature_cache)]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["label"] == "p5-sequential+clip_proj-image-text-tiny-test-clip-rand"
    facts = rec["model"]["adapter"]
    assert facts["modalities"] == ["image", "text"] and facts["random_init"] is True
    assert facts["encoder"]["model"] == "tiny-test-clip" and facts["encoder"]["pretrained"] is None
    assert facts["projector"]["kind"] == "resampler" and facts["k"] == 2
    image = facts["features"]["image"]
    assert image["missing"] == 3 and image["missing_share"] == pytest.approx(3 / N_ITEMS)
    assert image["unreadable"] == 1 and image["status_counts"] == {
        "empty": 1,
        "not_found": 1,
        "ok": N_ITEMS - 2,
    }
    assert facts["images"]["missing_share"] == pytest.approx(3 / N_ITEMS)
    assert rec["config"]["adapter"]["modalities"] == ["image", "text"]
    assert "<item_feat><item_feat>" in rec["model"]["p5"]["prompt"]["example"]
    assert 0 < rec["model"]["params_trainable"] and "test/cold_item/ndcg@10" in rec["metrics"]
    # The same run again, trained afresh: the features now come from the store, the results are identical.
    llm4rec("run", *args, "reuse_trained=false")
    again = load_record(run_dir)
    assert again["model"]["adapter"]["cache_hits"] == 2 and facts["cache_hits"] == 0
    assert (
        again["predictions"]["sha256"] == rec["predictions"]["sha256"] and again["metrics"] == rec["metrics"]
    )
    # Another seed: same features, read from the store (hits recorded), new weights trained.
    llm4rec("run", *args, "seed=1")
    second = load_record(next(d for d in runs(tmp_path) if d != run_dir))
    hits = second["model"]["adapter"]
    assert hits["cache_hits"] == 2 and hits["features"]["image"]["key"] == image["key"]
    assert hits["features"]["text"]["cache"] == "hit" and second["group_key"] == rec["group_key"]


def test_empty_modalities_reproduce_the_plain_run_bit_for_bit(tiny_dir, tmp_path):
    base = [*TINY, "model.indexing=random", *tiny_args(tiny_dir, tmp_path)]
    llm4rec("run", *base)
    llm4rec("run", *base, "adapter=clip_proj", "adapter.modalities=[]")
    plain, empty = (load_record(d) for d in runs(tmp_path))
    if plain["model"]["label"] != "p5-random":
        plain, empty = empty, plain
    assert (
        plain["model"]["label"] == "p5-random"
        and empty["model"]["label"] == "p5-random+clip_proj-nomod-minilm"
    )
    assert (
        empty["predictions"]["sha256"] == plain["predictions"]["sha256"]
        and empty["metrics"] == plain["metrics"]
    )
    assert empty["config_hash"] != plain["config_hash"] and empty["model"]["adapter"]["active"] is False
    assert "adapter" not in plain["model"]


def test_tallrec_with_a_text_adapter_through_the_cli(tiny_dir, tmp_path):
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    lm = make_tiny_lm(tmp_path / "lm", template_words("tallrec") + [f"Title {i}" for i in range(60)])
    llm4rec(
        "run",
        "model=tallrec",
        f"model.module.backbone={lm}",
        "model.module.shots=16",
        "model.train.max_epochs=1",
        "split=random",
        "eval=labeled",
        "adapter=clip_proj",
        "adapter.encoder=open_clip",
        "adapter.encoder.model=tiny-test-clip",
        "adapter.projector=linear",
        "adapter.train_llm=false",
        *tiny_args(tiny_dir, tmp_path),
        f"adapter.cache_dir={tmp_path / 'cache'}",
    )
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    facts = rec["model"]["adapter"]
    assert facts["train_llm"] is False and facts["projector"]["kind"] == "linear"
    assert facts["features"]["text"]["cache"] == "created" and facts["random_init"] is True
    assert rec["model"]["label"] == "tallrec-16shot+clip_proj-text-tiny-test-clip-rand"
    assert rec["model"]["params_trainable"] == facts["projector"]["params"] + 16  # + the missing embedding


@pytest.mark.slow
def test_ablation_multirun_runs_every_modality_set(image_dir, feature_cache, tmp_path):
    llm4rec(
        "run",
        "-m",
        *TINY,
        "model.indexing=sequential",
        "adapter=clip_proj",
        "adapter.encoder=open_clip",
        "adapter.encoder.model=tiny-test-clip",
        "adapter.modalities=[],[text],[image],[image,text]",
        *image_args(image_dir, tmp_path, feature_cache),
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    recs = [load_record(d) for d in runs(tmp_path)]
    assert sorted(tuple(r["config"]["adapter"]["modalities"]) for r in recs) == [
        (),
        ("image",),
        ("image", "text"),
        ("text",),
    ]
    for r in recs:
        assert "test/cold_item/ndcg@10" in r["metrics"] and "test/cold_user/ndcg@10" in r["metrics"]
        assert r["model"]["adapter"].get("active", True) == bool(r["config"]["adapter"]["modalities"])


@pytest.mark.slow
def test_documented_command_runs_with_a_random_vit_b_32(image_dir, feature_cache, tmp_path):
    """The documented command line, offline: pretrained=null builds ViT-B-32 with random weights."""
    args = [o for o in DOCUMENTED if not o.startswith("adapter.encoder.pretrained=")]
    llm4rec(
        "run",
        *TINY,
        *args,
        "adapter.encoder.pretrained=null",
        *image_args(image_dir, tmp_path, feature_cache),
    )
    (run_dir,) = runs(tmp_path)
    facts = assert_metrics_recompute(run_dir)["model"]["adapter"]
    assert facts["encoder"]["model"] == "ViT-B-32" and facts["random_init"] is True
    assert facts["features"]["image"]["dim"] == 512 and facts["features"]["image"]["missing"] == 3


def test_cpu_budget_p5_experiments_compose():
    from benchmark.compose import compose

    tiny = compose(["experiment=p5_tiny_ml100k"])
    assert (tiny.model.backbone, tiny.model.module.sample_windows, tiny.split.protocol) == ("t5-tiny-scratch", 19200, "loo")
    text = compose(["experiment=p5_adapters_ml100k", "adapter.modalities=[text]"])
    assert text.model.backbone == "t5-tiny-scratch" and text.model.indexing == "collaborative"
    assert list(text.adapter.modalities) == ["text"] and text.adapter.encoder._target_.endswith("HFTextEncoder")
    clip = compose(["experiment=p5_adapters_ml100k", "adapter.encoder=open_clip", "adapter.modalities=[text]"])
    assert clip.adapter.encoder._target_.endswith("OpenCLIPEncoder") and clip.adapter.encoder.pretrained is None
    smol = compose(["experiment=p5_smollm2_cpu_ml100k"])
    assert (smol.model.module.backbone, smol.model.module.sample_windows, smol.model.train.max_epochs) == (
        "smollm2-135m-instruct",
        1024,
        1,
    )
    assert smol.model.module.lora.r == 16 and smol.eval.protocol == "full" and smol.seed == 1
    # the ablation sweeps seeds only: p5_tiny_ml100k's indexing sweep must not leak in (sweeper params merge)
    sweep = compose(["experiment=p5_adapters_ml100k"], hydra=True).hydra.sweeper.params
    assert dict(sweep) == {"model.indexing": "collaborative", "seed": "1,2,3"}
