"""`rbi operator`: flags and environment, as the Helm chart sets them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rbi.cli.main import cli
from rbi.operator.settings import OperatorSettings


def test_operator_needs_namespaces() -> None:
    result = CliRunner().invoke(cli, ["operator", "--metrics-port", "0"])
    assert result.exit_code == 2 and "--namespace" in result.output


def test_settings_come_from_the_environment_and_flags_win() -> None:
    env = {"RBI_MAX_ACTIVE_JOBS": "7", "RBI_SANDBOX_IMAGE": "registry/rbi:2", "RBI_RUNTIME_CLASS": "gvisor",
           "RBI_DATASET_PVC": "datasets", "RBI_JOB_TTL_SECONDS": "120", "RBI_DB_URL": "postgresql://db/rbi",
           "RBI_CODE_DIRS": "/a:/b"}
    settings = OperatorSettings.from_env(env, namespaces=("research",), max_active_jobs=3, image=None)
    assert settings.max_active_jobs == 3 and settings.namespaces == ("research",)
    assert settings.job.image == "registry/rbi:2" and settings.job.runtime_class == "gvisor"
    assert settings.job.dataset_pvc == "datasets" and settings.job.ttl_seconds == 120
    assert settings.db_url == "postgresql://db/rbi" and settings.code_dirs == (Path("/a"), Path("/b"))
    assert settings.network_policy
    assert not OperatorSettings.from_env({"RBI_CREATE_NETWORK_POLICY": "false"}).network_policy
    with pytest.raises(ValueError, match="whole number"):
        OperatorSettings.from_env({"RBI_MAX_ACTIVE_JOBS": "many"})
    with pytest.raises(ValueError, match="exclude"):
        OperatorSettings(namespaces=("a",), all_namespaces=True)
