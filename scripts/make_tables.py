"""Tables from run records, as a script: ``python scripts/make_tables.py [--runs ...] [--out ...] [--anchors]``.

What ``make tables`` does, with its defaults: your runs (my_results/runs, configs/paths/default.yaml)
into my_results/tables, so the committed tables of the shipped study change only when asked for
(``--runs results/runs --out results/tables``). Otherwise ``python -m src.reporting.tables``; see
src/reporting/tables/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.reporting.tables import main  # noqa: E402  (after the path fix, as a script)

USER_DEFAULTS = {"--runs": "my_results/runs", "--out": "my_results/tables"}


def with_user_defaults(argv: list[str]) -> list[str]:
    """``argv`` with the user's folder for each of --runs and --out it does not give."""
    given = {arg.split("=", 1)[0] for arg in argv}
    return [*(x for flag, value in USER_DEFAULTS.items() if flag not in given for x in (flag, value)), *argv]


if __name__ == "__main__":
    main(with_user_defaults(sys.argv[1:]))
