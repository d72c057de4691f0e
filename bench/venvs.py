"""Virtualenvs for peers whose dependencies conflict, made on demand from pinned files.

``bench/requirements/NAME.txt`` becomes ``bench/.venvs/NAME-pyX.Y`` (gitignored),
on the interpreter that runs the bench, so every system of a run shares one
Python. A stamp named after the file's hash makes an edited requirements file
rebuild the venv, as the Makefile does for the project venv.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"
REQUIREMENTS = BENCH / "requirements"
#: pip from PyPI; a cold install of the largest set (Celery) takes well under this
INSTALL_TIMEOUT = 900


def python_for(name: str | None) -> str:
    """The interpreter for requirements ``name`` (None: this one), creating its venv."""
    if name is None:
        return sys.executable
    requirements = REQUIREMENTS / f"{name}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    home = VENVS / f"{name}-py{sys.version_info.major}.{sys.version_info.minor}"
    python = home / "bin" / "python"
    stamp = home / f".installed-{digest}"
    if stamp.exists() and python.exists():
        return str(python)
    if home.exists():
        shutil.rmtree(home)
    print(f"bench: creating {home.relative_to(BENCH.parent)} from {requirements.name}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(requirements)],
        check=True, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    stamp.touch()
    return str(python)
