"""The official SQuAD scorers (``evaluate-v1.1.py``, ``evaluate-v2.0.py``), written here because
``evaluate`` cannot load offline.

Each version is scored by its own script's rule; scores are fractions in [0, 1] rather than
percentages, as the report tables expect. The two differ where a gold answer normalises to nothing
(a bare "." or "the": 3 questions of SQuAD v1.1 dev): v2.0 drops such an answer, v1.1 keeps it, so a
prediction that also normalises to nothing matches it exactly (``evaluate_v1``).

A question without a prediction scores 0 and is counted, with one warning for all of them (v1.1's
rule). The v2.0 script leaves it out of the overall total but not out of the HasAns/NoAns totals,
where it raises KeyError; here it counts as 0 in every total.
"""

from __future__ import annotations

import collections
import logging
import re
import string

log = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def get_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)  # a no-answer scores 1 only against a no-answer
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def compute_f1_v1(a_gold: str, a_pred: str) -> float:
    """v1.1's F1: shared tokens only, so a gold answer that normalises to nothing has F1 0 (its exact
    match still counts)."""
    gold_toks, pred_toks = normalize_answer(a_gold).split(), normalize_answer(a_pred).split()
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def missing_predictions(golds: dict, preds: dict) -> list[str]:
    """Questions without a prediction; they score 0 (one warning names how many and the first few)."""
    missing = [qid for qid in golds if qid not in preds]
    if missing:
        log.warning(
            "%d of %d questions have no prediction and score 0 (%s%s)",
            len(missing),
            len(golds),
            ", ".join(missing[:3]),
            ", ..." if len(missing) > 3 else "",
        )
    return missing


def evaluate_v1(golds: dict[str, list[str]], preds: dict[str, str]) -> dict[str, float]:
    """SQuAD v1.1 scores of ``preds`` (question id -> answer text): exact and F1, each the best over
    the question's gold answers, every gold answer counted (``evaluate-v1.1.py``)."""
    exact = dict.fromkeys(missing_predictions(golds, preds), 0)
    f1 = dict.fromkeys(exact, 0.0)
    for qid, answers in golds.items():
        if qid not in preds:
            continue
        if not answers:
            raise ValueError(
                f"question {qid!r} has no gold answer: SQuAD v1.1 scores answerable questions only; "
                "score SQuAD v2.0 data with task.version_2=true"
            )
        exact[qid] = max(compute_exact(a, preds[qid]) for a in answers)
        f1[qid] = max(compute_f1_v1(a, preds[qid]) for a in answers)
    return make_eval_dict(exact, f1)


def get_raw_scores(golds: dict[str, list[str]], preds: dict[str, str]) -> tuple[dict, dict]:
    """Per-question exact and F1 (v2.0), each the max over the question's gold answers; questions
    without a prediction are left out (``evaluate`` scores them 0)."""
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        # Gold answers that normalise to nothing are dropped; with none left the only answer is "".
        gold = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in preds:
            continue
        exact[qid] = max(compute_exact(a, preds[qid]) for a in gold)
        f1[qid] = max(compute_f1(a, preds[qid]) for a in gold)
    return exact, f1


def apply_no_ans_threshold(
    scores: dict, na_probs: dict, qid_to_has_ans: dict, na_prob_thresh: float
) -> dict[str, float]:
    return {
        qid: float(not qid_to_has_ans[qid]) if na_probs[qid] > na_prob_thresh else s
        for qid, s in scores.items()
    }


def make_eval_dict(exact: dict, f1: dict, qid_list: list[str] | None = None) -> dict:
    qids = qid_list or list(exact)
    total = len(qids)
    return {
        "exact": sum(exact[q] for q in qids) / total,
        "f1": sum(f1[q] for q in qids) / total,
        "total": total,
    }


def find_best_thresh(preds: dict, scores: dict, na_probs: dict, qid_to_has_ans: dict) -> tuple[float, float]:
    """Best score over thresholds t on na_prob ("no answer" when na_prob > t), and that t, over all
    questions of ``qid_to_has_ans`` (a question without a prediction scores 0 at every t)."""
    # Start from answering nothing, then answer questions in order of increasing na_prob.
    cur_score = best_score = sum(1 for qid, has in qid_to_has_ans.items() if not has and qid in preds)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores or qid not in preds:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return best_score / len(qid_to_has_ans), best_thresh


def evaluate(
    golds: dict[str, list[str]],
    preds: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """SQuAD v2.0 scores of ``preds`` (question id -> answer text, "" for no answer), ``evaluate-v2.0.py``.

    ``golds`` maps question id -> gold answer texts (empty for unanswerable). ``na_probs`` (question
    id -> no-answer score, e.g. the null-score difference) adds the best-threshold scores; a question
    whose na_prob exceeds ``na_prob_thresh`` counts as answered "no answer".
    """
    qid_to_has_ans = {qid: bool(answers) for qid, answers in golds.items()}
    has_ans = [q for q, has in qid_to_has_ans.items() if has]
    no_ans = [q for q, has in qid_to_has_ans.items() if not has]
    missing = missing_predictions(golds, preds)
    exact_raw, f1_raw = get_raw_scores(golds, preds)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}
    exact = apply_no_ans_threshold(exact_raw, probs, qid_to_has_ans, na_prob_thresh)
    f1 = apply_no_ans_threshold(f1_raw, probs, qid_to_has_ans, na_prob_thresh)
    exact.update(dict.fromkeys(missing, 0))
    f1.update(dict.fromkeys(missing, 0.0))
    out = make_eval_dict(exact, f1)
    for prefix, qids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in make_eval_dict(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(
            preds, exact_raw, na_probs, qid_to_has_ans
        )
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    return out
