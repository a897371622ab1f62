"""Experiment loggers from config: CSV by default, wandb (offline unless a key is configured)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger


def wandb_online() -> bool:
    """True when the user configured a wandb API key (env or ~/.netrc); never needs network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def csv_logger(save_dir: str, run_id: str, version: str = "") -> Logger:
    """Lightning's CSV logger under ``save_dir/run_id/version``.

    ``run`` passes each invocation's own ``version`` (time and process id), so two invocations
    of one run never share (or delete) each other's ``metrics.csv``.
    """
    return CSVLogger(save_dir=save_dir, name=run_id, version=version)


def wandb_logger(
    save_dir: str,
    run_id: str,
    project: str = "llm4rec-bench",
    entity: str | None = None,
    offline: bool | None = None,
    tags: list[str] | None = None,
    version: str | None = None,
) -> Logger:
    """Lightning's wandb logger; ``offline=None`` means offline unless a key is configured.

    Offline runs are stored under ``save_dir/wandb`` and can be uploaded later with
    ``wandb sync <dir>``. The wandb run is named after the run id; its id is the run id plus this
    invocation's ``version``, so every invocation is a wandb run (and folder) of its own.
    """
    from pytorch_lightning.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    off = (not wandb_online()) if offline is None else bool(offline)
    return WandbLogger(
        project=project,
        entity=entity,
        name=run_id,
        id=f"{run_id}-{version}" if version else run_id,
        save_dir=save_dir,
        offline=off,
        tags=list(tags or []),
        mode="offline" if off else "online",
    )


def log_final(logger: Logger | None, record: dict[str, Any], run_dir: Path) -> None:
    """Log config, final metrics and (wandb) the run record as an artifact."""
    if logger is None:
        return
    logger.log_hyperparams(record["config"])
    logger.log_metrics({k: v for k, v in record["metrics"].items() if v is not None})
    if type(logger).__name__ == "WandbLogger":
        import wandb

        art = wandb.Artifact(f"run-{record['run_id']}", type="run-record")
        art.add_dir(str(run_dir))
        logger.experiment.log_artifact(art)
    logger.finalize("success")
    if type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()


def log_leaderboard_table(rows: list[dict[str, Any]], save_dir: str, project: str = "llm4rec-bench") -> Path:
    """Log the leaderboard as a wandb Table (offline unless a key is configured); return the run dir."""
    import wandb

    from benchmark.results.leaderboard import CSV_HEAD

    metrics = sorted({m for r in rows for m in r["metrics"]})
    columns = [h for h in CSV_HEAD] + metrics
    data = [[r[h] for h in CSV_HEAD] + [r["metrics"].get(m, (None,))[0] for m in metrics] for r in rows]
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project, dir=save_dir, job_type="leaderboard", mode="online" if wandb_online() else "offline",
        reinit="finish_previous",
    )
    run.log({"leaderboard": wandb.Table(columns=columns, data=data)})
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
