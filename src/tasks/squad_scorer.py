"""The official SQuAD scorer (``evaluate-v2.0.py``), written here because ``evaluate`` cannot load offline.

Semantics follow the v2.0 script line by line; the only change is that scores are fractions in
[0, 1] rather than percentages, as the report tables expect. On SQuAD v1.1 data (every question
answerable) it gives the v1.1 script's numbers except where a gold answer normalises to nothing.
"""

from __future__ import annotations

import collections
import re
import string

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


def get_raw_scores(golds: dict[str, list[str]], preds: dict[str, str]) -> tuple[dict, dict]:
    """Per-question exact and F1, each the max over the question's gold answers."""
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        # Gold answers that normalise to nothing are dropped; with none left the only answer is "".
        gold = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in preds:  # the official script skips (and prints) missing predictions
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
    """Best score over thresholds t on na_prob ("no answer" when na_prob > t), and that t."""
    # Start from answering nothing, then answer questions in order of increasing na_prob.
    cur_score = best_score = sum(1 for has in qid_to_has_ans.values() if not has)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return best_score / len(scores), best_thresh


def evaluate(
    golds: dict[str, list[str]],
    preds: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """SQuAD v2.0 scores of ``preds`` (question id -> answer text, "" for no answer).

    ``golds`` maps question id -> gold answer texts (empty for unanswerable). ``na_probs`` (question
    id -> no-answer score, e.g. the null-score difference) adds the best-threshold scores; a question
    whose na_prob exceeds ``na_prob_thresh`` counts as answered "no answer".
    """
    qid_to_has_ans = {qid: bool(answers) for qid, answers in golds.items()}
    has_ans = [q for q, has in qid_to_has_ans.items() if has]
    no_ans = [q for q, has in qid_to_has_ans.items() if not has]
    exact_raw, f1_raw = get_raw_scores(golds, preds)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}
    exact = apply_no_ans_threshold(exact_raw, probs, qid_to_has_ans, na_prob_thresh)
    f1 = apply_no_ans_threshold(f1_raw, probs, qid_to_has_ans, na_prob_thresh)
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
