"""Tables from run records, as a script: ``python scripts/make_tables.py [--runs ...] [--out ...] [--anchors]``.

The same as ``python -m src.reporting.tables`` and ``make tables``; see src/reporting/tables.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.reporting.tables import main  # noqa: E402  (after the path fix, as a script)

if __name__ == "__main__":
    main()
