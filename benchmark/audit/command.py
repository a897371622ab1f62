"""``llm4rec audit``'s arguments and what it does with a composed config (the CLI stays thin).

::

    llm4rec audit [OVERRIDE ...] [--index FILE ...] [--out FILE]
    llm4rec audit --files DIR [--layout export|p5|tallrec] [--index FILE ...] [audit.KEY=V ...] [--out FILE]

The first audits the configured split (data=, split=, eval=) and the item indexes named by
``audit.indexes`` (default: the chosen model's own); the second audits files written by another
code base (:mod:`benchmark.audit.external`). ``--index FILE`` adds an external index file
(``ITEM ID`` per line). The report is printed, and written as JSON with ``--out``; the exit
status is 1 when a finding is an error (a figure above its ``audit.fail`` threshold). Bad
input is a one-line error before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError

DEFAULT_GROUP = "+audit=default"


@dataclass
class AuditArgs:
    """The parsed command line: overrides, ``--files``, ``--layout``, ``--index`` files, ``--out``."""

    overrides: list[str] = field(default_factory=list)
    files: Path | None = None
    layout: str | None = None
    index_files: list[Path] = field(default_factory=list)
    out: Path | None = None

    def compose_overrides(self) -> list[str]:
        """What to compose: the audit group, then the overrides."""
        return [DEFAULT_GROUP, *self.overrides]


def parse_args(argv: list[str]) -> AuditArgs:
    """``--files DIR``, ``--layout NAME``, ``--index FILE`` (repeatable), ``--out FILE`` (each also
    as ``--flag=value``); everything else is an override.

    Raises:
        ConfigError: a flag without its value, an unknown flag, or (with ``--files``) an override
            other than ``audit.*``.
    """
    args = AuditArgs()
    flags = {"--files", "--layout", "--index", "--out"}
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in flags:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"audit: {name} needs a value")
                value, i = argv[i + 1], i + 1
            if name == "--files":
                args.files = Path(value)
            elif name == "--layout":
                args.layout = value
            elif name == "--index":
                args.index_files.append(Path(value))
            else:
                args.out = Path(value)
        elif a.startswith("-"):
            raise ConfigError(f"audit: unknown option {a} (see llm4rec audit --help)")
        else:
            args.overrides.append(a)
        i += 1
    if args.files is not None:
        other = [o for o in args.overrides if not o.lstrip("+~").startswith("audit.")]
        if other:
            raise ConfigError(f"audit --files: only audit.* overrides apply to files (got {other[0]})")
    if args.layout is not None and args.files is None:
        raise ConfigError("audit: --layout needs --files DIR")
    return args


def run_command(cfg: Any, args: AuditArgs) -> tuple[dict[str, Any], int]:
    """Audit what the command line names, write ``--out``; (report, exit status 0 or 1).

    Args:
        cfg: the composed config (``+audit=default`` and the overrides), already checked when a
            configured split is audited.
        args: the parsed command line.
    """
    from omegaconf import OmegaConf

    from benchmark.audit.external import read_files, read_index_file
    from benchmark.audit.report import audit_options, configured, run_audit, write_report

    if args.files is not None:
        data, indexes = read_files(args.files, args.layout)
        _, limits = audit_options(OmegaConf.to_container(cfg.audit, resolve=True))
    else:
        data, indexes, limits = configured(cfg)
    indexes += [read_index_file(path, data.item_ids) for path in args.index_files]
    report = run_audit(data, indexes, limits)
    if args.out is not None:
        write_report(report, args.out)
    return report, 0 if report["passed"] else 1
