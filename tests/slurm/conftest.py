"""The ``slurm_cluster`` fixture: a one-node SLURM cluster started from the Debian packages.

Tests that use it are marked ``slurm`` and skipped when SLURM is not installed (``.ci/run``
installs ``slurm-wlm`` and ``munge``). All state lives in a temporary folder; the daemons are
stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slurm.cluster import Cluster, missing, start


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = missing()
    if why:
        pytest.skip(why)
    cluster = start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()
