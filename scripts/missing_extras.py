"""Print the requirements of one of pyproject.toml's optional-dependency groups that this Python lacks.

``python scripts/missing_extras.py bench`` prints them space-separated (nothing when all are installed
at a version their specifier allows), so ``make bench`` installs exactly those and leaves everything
else in the venv, the project's own editable install included, as it is.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement


def missing(group: str, pyproject: Path = Path(__file__).resolve().parents[1] / "pyproject.toml") -> list[str]:
    wanted = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"][group]
    out = []
    for line in wanted:
        requirement = Requirement(line)
        try:
            if requirement.specifier.contains(version(requirement.name), prereleases=True):
                continue
        except PackageNotFoundError:
            pass
        out.append(line)
    return out


if __name__ == "__main__":
    print(" ".join(missing(sys.argv[1] if len(sys.argv) > 1 else "bench")))
