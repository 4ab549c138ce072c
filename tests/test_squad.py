"""SQuAD: the official scorer on hand-worked cases, span features and decoding on real rows, a short run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import load_dataset
from omegaconf import OmegaConf
from transformers import EvalPrediction

from src.runtime.backbones import load_tokenizer
from src.tasks import prepare_task
from src.tasks import question_answering as qa
from src.tasks import squad_scorer as squad
from src.tasks.sources import DataError
from src.train import train

# q1 right, q2 half right, q3 correctly unanswered, q4 answered though unanswerable.
GOLDS = {"q1": ["France"], "q2": ["the Norman conquest of England"], "q3": [], "q4": []}
PREDS = {"q1": "france", "q2": "Norman conquest", "q3": "", "q4": "Rollo"}
LABELS = ["start_positions", "end_positions"]  # the QA head's gold token positions


def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert squad.normalize_answer("The  Quick, Brown-fox!") == "quick brownfox"
    assert squad.normalize_answer("an apple a day") == "apple day"
    assert squad.normalize_answer("Theory of Anything") == "theory of anything"  # whole words only
    assert squad.compute_exact("The Eiffel Tower", "eiffel tower.") == 1


def test_f1_counts_shared_tokens_with_multiplicity():
    # gold [norman, conquest, of, england], pred [norman, conquest]: P = 1, R = 1/2
    assert squad.compute_f1("the Norman conquest of England", "Norman conquest") == pytest.approx(2 / 3)
    # gold [new, york, new, jersey], pred [new, new, york]: 3 shared, P = 1, R = 3/4
    assert squad.compute_f1("New York New Jersey", "New New York") == pytest.approx(6 / 7)
    assert squad.compute_f1("Paris", "London") == 0


def test_the_best_of_several_gold_answers_counts():
    golds = {"q": ["Denmark", "Denmark, Iceland and Norway"]}
    scores = squad.evaluate(golds, {"q": "Iceland and Norway"})
    assert scores["exact"] == 0 and scores["f1"] == pytest.approx(6 / 7)  # P = 1, R = 3/4 vs the second


def test_no_answer_scores_one_only_against_no_answer():
    assert squad.evaluate({"q": []}, {"q": ""})["exact"] == squad.evaluate({"q": []}, {"q": ""})["f1"] == 1
    assert squad.evaluate({"q": []}, {"q": "France"})["f1"] == 0
    assert squad.evaluate({"q": ["France"]}, {"q": ""})["f1"] == 0


def test_totals_split_into_answerable_and_unanswerable():
    scores = squad.evaluate(GOLDS, PREDS)
    assert scores == pytest.approx(
        {
            "exact": 2 / 4,
            "f1": (1 + 2 / 3 + 1 + 0) / 4,
            "total": 4,
            "HasAns_exact": 1 / 2,
            "HasAns_f1": (1 + 2 / 3) / 2,
            "HasAns_total": 2,
            "NoAns_exact": 1 / 2,
            "NoAns_f1": 1 / 2,
            "NoAns_total": 2,
        }
    )


def test_best_threshold_answers_the_questions_least_likely_unanswerable_first():
    na_probs = {"q1": -3.0, "q2": -2.0, "q4": -1.0, "q3": 2.0}
    scores = squad.evaluate(GOLDS, PREDS, na_probs, na_prob_thresh=0.0)
    assert scores["exact"] == 2 / 4  # only q3 is over the threshold, and it was answered "" anyway
    # Start from "no answer" everywhere (2 right), then answer in order q1, q2, q4, q3:
    # exact 3, 3, 2, 2 -> best 3/4 at -3; F1 3, 3 2/3, 2 2/3, 2 2/3 -> best 11/12 at -2.
    assert scores["best_exact"] == pytest.approx(3 / 4) and scores["best_exact_thresh"] == -3.0
    assert scores["best_f1"] == pytest.approx(11 / 12) and scores["best_f1_thresh"] == -2.0
    # With a lower threshold q4 (na_prob -1) counts as "no answer" too, which is right for it.
    assert squad.evaluate(GOLDS, PREDS, na_probs, na_prob_thresh=-1.5)["exact"] == 3 / 4


def test_v1_keeps_a_gold_answer_that_normalises_to_nothing():
    # A real SQuAD v1.1 dev question (5730b7ce069b5314008322c4): one annotator marked ".".
    golds = {"q": ["interventionism", ".", "interventionism"]}
    v1, v2 = squad.evaluate_v1(golds, {"q": ""}), squad.evaluate(golds, {"q": ""})
    assert (v1["exact"], v1["f1"]) == (1, 0)  # "" matches "." exactly; v1.1's F1 needs a shared token
    assert (v2["exact"], v2["f1"]) == (0, 0)  # v2.0 drops "." and scores against "interventionism"
    assert squad.evaluate_v1(golds, {"q": "Interventionism."}) == {"exact": 1, "f1": 1.0, "total": 1}
    # v1.1 F1 of two answers that both normalise to nothing is 0; v2.0's is 1
    assert squad.compute_f1_v1("the", "a") == 0 and squad.compute_f1("the", "a") == 1


def test_v1_matches_v2_when_every_gold_answer_has_words():
    golds = {"q1": ["France"], "q2": ["the Norman conquest of England", "Norman conquest"]}
    preds = {"q1": "in France", "q2": "conquest"}
    v1, v2 = squad.evaluate_v1(golds, preds), squad.evaluate(golds, preds)
    assert v1 == pytest.approx({k: v2[k] for k in ("exact", "f1", "total")})
    assert "HasAns_total" not in v1 and v1["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_v1_refuses_an_unanswerable_question():
    with pytest.raises(ValueError, match=r"question 'q' has no gold answer.*task\.version_2=true"):
        squad.evaluate_v1({"q": []}, {"q": ""})


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_missing_prediction_scores_zero_with_one_warning(version, caplog):
    golds = {"q1": ["France"], "q2": ["Paris"], "q3": ["Rollo"]}
    score = squad.evaluate_v1 if version == "v1" else squad.evaluate
    with caplog.at_level("WARNING", logger="src.tasks.squad_scorer"):
        scores = score(golds, {"q1": "France"})
    assert (scores["exact"], scores["f1"], scores["total"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 3)
    [warning] = caplog.records
    assert warning.getMessage() == "2 of 3 questions have no prediction and score 0 (q2, q3)"


def test_v2_missing_predictions_count_as_zero_in_every_total():
    preds = {k: v for k, v in PREDS.items() if k not in ("q1", "q3")}  # one answerable, one not
    na_probs = {"q2": -2.0, "q4": -1.0}
    scores = squad.evaluate(GOLDS, preds, na_probs, na_prob_thresh=0.0)
    assert scores["total"] == scores["HasAns_total"] + scores["NoAns_total"] == 4
    assert scores["HasAns_f1"] == pytest.approx((0 + 2 / 3) / 2) and scores["NoAns_exact"] == 0
    # answering nothing would get q4 right (1); answering q2 first adds 2/3 of F1: best 5/3 over 4
    assert scores["best_f1"] == pytest.approx((1 + 2 / 3) / 4) and scores["best_f1_thresh"] == -2.0


@pytest.fixture(scope="module")
def squad_v2_rows(shared_data):
    rows = load_dataset("json", data_files=str(shared_data / "squad_v2" / "validation.jsonl"), split="train")
    return rows.select(range(300))


def one_hot(positions: list[int], length: int) -> np.ndarray:
    logits = np.zeros((len(positions), length), dtype=np.float32)
    logits[np.arange(len(positions)), positions] = 10.0
    return logits


def test_gold_positions_decode_back_to_the_gold_answers(squad_v2_rows, tiny_backbone):
    task = OmegaConf.create({"name": "squad_v2", "max_length": 96, "doc_stride": 32})
    features = qa.featurise(squad_v2_rows, load_tokenizer(tiny_backbone), task)
    assert set(map(len, features["input_ids"])) == {96}  # padded: eval logits concatenate as they are
    side = features.select_columns(qa.SIDE_COLUMNS).to_dict()
    ids, starts, ends = side["example_id"], features["start_positions"][:], features["end_positions"][:]
    assert len(ids) > 2 * len(squad_v2_rows)  # long contexts overflow into several windows
    first = {e: i for i, e in reversed(list(enumerate(ids)))}
    assert any(
        i != first[e] and s != k
        for i, (e, s, k) in enumerate(zip(ids, starts, side["cls_index"], strict=True))
    )
    preds, diffs = qa.postprocess(
        squad_v2_rows, side, one_hot(starts, 96), one_hot(ends, 96), 20, 30, True, 0.0
    )
    for row in squad_v2_rows:
        gold = row["answers"]["text"]
        assert preds[row["id"]] == (gold[0] if gold else ""), row["id"]
        assert (diffs[row["id"]] > 0) == (not gold)
    assert squad.evaluate({r["id"]: r["answers"]["text"] for r in squad_v2_rows}, preds)["exact"] == 1.0


def test_squad_family_feeds_the_trainer_model_inputs_and_scores_gold_logits(
    cfg_factory, shared_data, tiny_backbone
):
    cfg = cfg_factory(
        "task=squad",
        f"task.data_dir={shared_data}/squad",
        "task.split_from={source: validation, group_by: title, eval_fraction: 0.5, seed: 0}",
        "task.max_train_samples=16",
        "task.max_eval_samples=32",
    )
    prepared = prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=0)
    assert prepared.head == "qa" and prepared.primary_metric == "f1"
    features = prepared.evals["validation"]
    for ds in (prepared.train, features):  # remove_unused_columns=False: model inputs and labels only
        assert set(ds.column_names) <= {"input_ids", "token_type_ids", "attention_mask", *LABELS}
    logits = tuple(one_hot(features[k][:], cfg.task.max_length) for k in LABELS)
    scores = prepared.compute_metrics(EvalPrediction(predictions=logits, label_ids=None))
    assert scores["total"] == 32 and scores["exact"] == scores["f1"] == 1.0
    assert "best_f1" not in scores  # v1.1: no null answer, so no threshold to tune


def test_v1_scoring_of_data_with_unanswerable_questions_is_refused_before_training(
    cfg_factory, shared_data, tiny_backbone
):
    cfg = cfg_factory(
        "task=squad",
        f"task.data_dir={shared_data}/squad_v2",
        "task.split_from={source: validation, group_by: title, eval_fraction: 0.5, seed: 0}",
        "task.max_eval_samples=64",
    )
    with pytest.raises(
        DataError, match=r"eval question\(s\) of task 'squad' have no gold answer.*version_2=true"
    ):
        prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=0)


# triadapt: a method of this project, so the trainer must find the QA labels without PEFT's help.
METHOD_OVERRIDES = {
    "adalora": [],
    "triadapt": ["budget=r2", "method.init_warmup=2", "method.incre_interval=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_OVERRIDES)
def test_tiny_deberta_on_real_squad_v2_scores_exact_and_f1(cfg_factory, shared_data, method):
    cfg = cfg_factory(
        "backbone=tiny-deberta",
        "task=squad_v2",
        f"task.data_dir={shared_data}/squad_v2",
        "task.split_from={source: validation, group_by: title, eval_fraction: 0.5, seed: 0}",
        "task.max_train_samples=64",
        "task.max_eval_samples=64",
        "task.max_length=128",
        "task.doc_stride=32",
        f"method={method}",
        *METHOD_OVERRIDES[method],
        "trainer.max_steps=4",
        "trainer.eval_steps=2",
        "trainer.per_device_train_batch_size=8",
        "logger=none",
        "save_adapter=false",
    )
    record = train(cfg)
    assert record["status"] == "ok" and record["primary_metric"] == "f1"
    assert [e["step"] for e in record["evals"]] == [2, 4]
    for entry in [*record["evals"], record["best"]]:
        for key in ("exact", "f1", "HasAns_f1", "NoAns_f1", "best_exact", "best_f1"):
            assert math.isfinite(entry[key]) and 0.0 <= entry[key] <= 1.0, (key, entry)
        assert entry["total"] == 64 and math.isfinite(entry["loss"])
    print({k: record["best"][k] for k in ("step", "exact", "f1", "best_exact", "best_f1", "loss")})
