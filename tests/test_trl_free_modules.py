"""The labeling and synthetic-world packages never import TRL.

CI runs tests/labeling and tests/synthetic on one TRL version only (.ci/run): that is sound only while this holds.
"""

from __future__ import annotations

import subprocess
import sys


def test_labeling_and_synthetic_do_not_import_trl():
    code = (
        "import sys, pkgutil, importlib\n"
        "import dmoerm_trl.labeling, dmoerm_trl.synthetic\n"
        "for package in (dmoerm_trl.labeling, dmoerm_trl.synthetic):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print(sorted(m for m in sys.modules if m == 'trl' or m.startswith('trl.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
