"""Library output that a user of ``src.train`` cannot act on, kept off the console in this one place.

Each entry says why it is noise here. Noise still goes to the run's log file (Hydra's
``<output dir>/train.log``), so nothing is lost for a post-mortem; anything not listed reaches the
console as before, so the console holds the run's own progress and ends with its summary.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

# Python warnings, matched by category and message (a regular expression, searched).
KNOWN_WARNINGS = [
    # peft's PeftModel reads ``model.is_gradient_checkpointing`` when it wraps a model; transformers 5
    # deprecated the name. The read is peft's, not ours or the user's, and changes nothing.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]

# transformers' LOAD REPORT names a table row's status in its second column; MISSING means "not in
# the checkpoint, newly initialised". A task head (backbone.heads: classifier, qa_outputs, ...) is
# exactly that for every fine-tuning run, which is what the report says of it and all it says.
_LOAD_REPORT = "LOAD REPORT"
_LOAD_REPORT_LOGGER = "transformers.modeling_utils"  # where from_pretrained logs it (transformers 5)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ToLogFiles(logging.Handler):
    """Hands a record to the file handlers the root logger has now (Hydra's train.log; each job of a
    multirun gets its own), not to its console handler. Without file handlers (a test, a notebook)
    the record is dropped."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)


def log_file_only() -> logging.Logger:
    """The logger whose records go to the run's log file only."""
    logger = logging.getLogger(f"{__name__}.log_file")
    if not any(isinstance(h, _ToLogFiles) for h in logger.handlers):
        logger.addHandler(_ToLogFiles())
        logger.propagate = False  # the root logger's console handler would print it
    return logger


def _head_names(heads) -> set[str]:
    """The module names of ``backbone.heads`` ({head kind: [module, ...]}). Read before the config is
    checked, so anything malformed gives no names here; check_config then says what is wrong."""
    try:
        if not isinstance(heads, Mapping):
            return set()
        return {
            str(name)
            for names in heads.values()
            if isinstance(names, Sequence) and not isinstance(names, str)
            for name in names
        }
    except Exception:  # noqa: BLE001  (an interpolation that does not resolve: check_config reports it)
        return set()


def only_new_heads(report: str, heads: Iterable[str]) -> bool:
    """Whether a LOAD REPORT lists nothing but MISSING keys inside the backbone's task heads: the
    weights every fine-tuning run initialises. Anything else (an UNEXPECTED or MISMATCHED key, a
    missing encoder weight, a table this parser does not know) is for the user to see."""
    heads = set(heads)
    rows = []
    for line in _ANSI.sub("", report).splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 2 or not cells[0] or set(line) <= set("-+ ") or cells[:2] == ["Key", "Status"]:
            continue
        rows.append((cells[0], cells[1]))
    return bool(rows) and all(
        status == "MISSING" and any(h in key.split(".") for h in heads) for key, status in rows
    )


class _LoadReportToLogFile(logging.Filter):
    """A LOAD REPORT of new head weights only goes to the log file instead of the console
    (transformers' loggers do not propagate to the root logger, so it is not in the log file
    otherwise)."""

    def __init__(self, heads: set[str]):
        super().__init__()
        self.heads = heads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log_file_only().name:  # the report on its way to the log file
            return True
        message = record.getMessage()
        if _LOAD_REPORT in message and only_new_heads(message, self.heads):
            log_file_only().info("transformers: %s", _ANSI.sub("", message))
            return False
        return True


def _is_known_warning(message, category) -> bool:
    return any(
        issubclass(category, known) and re.search(pattern, str(message)) for known, pattern in KNOWN_WARNINGS
    )


def _route_warnings() -> None:
    """Known warnings go to the log file; every other warning is shown as Python shows it."""
    show = warnings.showwarning
    if getattr(show, "_quiet", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if _is_known_warning(message, category):
            log_file_only().info("%s: %s (%s:%s)", category.__name__, message, filename, lineno)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning._quiet = True
    warnings.showwarning = showwarning


def _import_transformers_wandb_integration() -> None:
    """transformers prints "[INFO] Running in WANDB offline mode" (a bare print) when its W&B
    integration is imported with WANDB_MODE=offline: the mode the user chose, said back to them
    before anything else. Imported here once, its output going to the log file."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        import transformers.integrations.integration_utils  # noqa: F401
    if out.getvalue().strip():
        log_file_only().info("transformers: %s", out.getvalue().strip())


def silence_known_noise(heads=None) -> None:
    """Install every rule above; call it before transformers' Trainer or the config schema is
    imported (both import transformers' W&B integration). ``heads``: the config's backbone.heads.
    Idempotent: a second call (a multirun's next job, a test) adds nothing twice."""
    import transformers

    _route_warnings()
    _import_transformers_wandb_integration()
    # The "Loading weights" bar: a second or two reading a local checkpoint, and in a log or pipe one
    # more line of \r-joined frames. The Trainer's own bars are tqdm's and stay (trainer.show_progress).
    transformers.utils.logging.disable_progress_bar()
    # On the logger transformers writes the report to, not on a handler: the filter then sees the
    # record whichever way it travels (transformers' own console handler, or the root logger's when
    # something has turned propagation on, as an in-process Hydra run or a notebook may)
    reports = logging.getLogger(_LOAD_REPORT_LOGGER)
    for old in [f for f in reports.filters if isinstance(f, _LoadReportToLogFile)]:
        reports.removeFilter(old)  # this run's backbone, not the previous one's
    reports.addFilter(_LoadReportToLogFile(_head_names(heads)))


class _WandbTerminal:
    """What wandb's terminal functions print (wandb.termlog / termwarn / termerror), by level: its
    informational lines go to the log file, its warnings and errors to the console as ours do."""

    def info(self, msg: str) -> None:
        log_file_only().info(msg)

    def warning(self, msg: str) -> None:
        log.warning(msg)

    def error(self, msg: str) -> None:
        log.error(msg)


def wandb_to_log_file(wandb) -> None:
    """W&B's informational lines go to the log file: its header (version, offline mode, where the run
    is saved) and, at the end, ~40 lines of run history and summary sparklines repeating the metrics
    the run record holds, then the `wandb sync` command. Call before ``wandb.init``.

    wandb's silent mode hands each line to a fallback logger instead of printing it (wandb.termsetup);
    wandb.setup() sets that up once per process with no logger, so it is set again after it. The
    run's own settings stay as they are: with ``silent`` there, wandb would not produce the lines at
    all, and its warnings (a failed upload, a step that went backwards) stay on the console."""
    wandb.setup()
    wandb.termsetup(wandb.Settings(silent=True), _WandbTerminal())
