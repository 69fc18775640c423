"""Reading a learner's answer and scoring it: regret against the exact optimum, and the
Brier and log scores of a stated probability against the exact one."""

from __future__ import annotations

import math
from dataclasses import dataclass

from derisk.planner import SUCCESS, UNTRIED
from derisk.quiz._rounds import STOP, QuizError, Round, roadmap_dict

# A stated probability is clipped to [LOG_CLIP, 1 - LOG_CLIP] for the log score, so an
# answer of 0 or 1 costs at most -ln(0.001) = 6.9 nats instead of infinity.
LOG_CLIP = 1e-3


class AnswerError(QuizError):
    """An answer that is not one of the valid ones; `valid` lists them."""

    def __init__(self, message: str, *, valid: tuple[str, ...]):
        self.valid = valid
        super().__init__(message)


def valid_text(r: Round) -> str:
    """The valid answers of a round, as a learner reads them: `e0 (row 1), e3 (row 4), stop`."""
    return ", ".join([f"{m} (row {r.row(m)})" for m in r.runnable] + [STOP])


def _why_not(r: Round, eid: str) -> str:
    pr = r.problem
    i = pr.ids.index(eid)
    if pr.start_status[i] != UNTRIED:
        return f"{eid} has already been run"
    succ = {pr.ids[k] for k in range(pr.n) if pr.start_status[k] == SUCCESS}
    e = r.roadmap.experiment(eid)
    for clause in e.requires:
        if not succ & set(clause):
            need = clause[0] if len(clause) == 1 else "one of " + ", ".join(clause)
            return f"{eid} needs {need} to succeed first"
    return f"{eid} costs more than the budget left"


def parse_answer(r: Round, text: str) -> str:
    """A runnable experiment's id (or its row number in the table), or "stop".

    Ids match exactly, else ignoring case. Anything else raises `AnswerError` naming the
    valid answers.
    """
    t = str(text).strip()
    if t.lower() == STOP:
        return STOP
    if t in r.q:
        return t
    ids = r.roadmap.ids
    if t.isdigit() and 1 <= int(t) <= len(ids):
        eid = ids[int(t) - 1]
        if eid in r.q:
            return eid
        reason = _why_not(r, eid)
    else:
        folded = [m for m in r.q if m.lower() == t.lower()]
        if len(folded) == 1:
            return folded[0]
        known = [m for m in ids if m.lower() == t.lower()]
        if known:
            reason = _why_not(r, known[0])
        elif t:
            reason = f"`{t}` is not an experiment of {r.roadmap.name}"
        else:
            reason = "no answer given"
    raise AnswerError(f"round {r.number}: {reason}; answer one of {valid_text(r)}", valid=r.choices)


def parse_probability(text: str) -> float:
    """A probability as a number in [0, 1] (`0.4`, `.4`) or a percentage (`40%`)."""
    t = str(text).strip()
    try:
        x = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        x = math.nan
    if not (0.0 <= x <= 1.0):
        raise QuizError(
            f"`{t}` is not a probability; give a number from 0 to 1 (e.g. 0.35) or a "
            "percentage (35%)"
        )
    return x


def calibration_scores(stated: float, exact: float) -> dict[str, float]:
    """Expected Brier and log scores of a stated probability when the event happens with
    the exact probability `exact` (lower is better), and the best achievable (stating
    the exact probability).

    Brier: E[(stated - outcome)^2] = (stated - exact)^2 + exact (1 - exact).
    Log: E[-ln P(outcome)] = -(exact ln stated + (1 - exact) ln(1 - stated)), in nats,
    the stated probability clipped to [0.001, 0.999].

    >>> s = calibration_scores(0.5, 0.5)
    >>> round(s["brier"], 3), round(s["log"], 3), s["brier"] == s["brier_best"]
    (0.25, 0.693, True)
    """
    q = min(max(stated, LOG_CLIP), 1 - LOG_CLIP)
    p = exact

    def log_loss(x):
        return -(p * math.log(x) + (1 - p) * math.log(1 - x))

    best = min(max(p, LOG_CLIP), 1 - LOG_CLIP)
    return {
        "brier": (stated - p) ** 2 + p * (1 - p),
        "log": log_loss(q),
        "brier_best": p * (1 - p),
        "log_best": log_loss(best),
    }


@dataclass(frozen=True, eq=False)
class Scored:
    """One answered round: the move, its regret, and the calibration answer if asked."""

    round: Round
    answer: str
    regret: float  # optimal value minus the answer's value; 0 for a tied move
    regret_pct: float | None  # of the optimal value (None when that is not positive)
    stated_p: float | None = None
    scores: dict[str, float] | None = None  # calibration_scores, when stated_p is given

    @property
    def optimal(self) -> bool:
        return self.answer in self.round.optimal_set

    def as_dict(self) -> dict:
        r = self.round
        out = {
            "round": r.number,
            "level": r.level,
            "roadmap": round_roadmap(r),
            "answer": self.answer,
            "optimal": r.optimal,
            "optimal_set": list(r.optimal_set),
            "regret": self.regret,
            "regret_pct": self.regret_pct,
            "heuristics": dict(r.heuristics),
        }
        if self.stated_p is not None:
            out["calibration"] = {
                "top": r.top,
                "stated": self.stated_p,
                "exact": r.p_top,
                **(self.scores or {}),
            }
        return out


def round_roadmap(r: Round) -> dict:
    """What a round was played on: the generated roadmap in the file format, or (for a
    roadmap of the user's) its file, the outcomes so far and the budget left."""
    if r.source is None:
        return roadmap_dict(r.roadmap)
    return {
        "name": r.roadmap.name,
        "file": r.source,
        "recorded": dict(r.outcomes),
        "budget_left": r.budget_left,
    }


def score(r: Round, answer: str, *, stated_p: float | None = None) -> Scored:
    """Score a parsed answer (`parse_answer`). Any move of the optimal set scores 0.

    >>> from derisk.quiz import generate_rounds
    >>> r = next(generate_rounds(seed=0, level=1, count=1))
    >>> score(r, r.optimal).regret
    0.0
    """
    if answer not in r.choices:
        raise AnswerError(
            f"round {r.number}: `{answer}` is not a valid move; answer one of {valid_text(r)}",
            valid=r.choices,
        )
    regret = 0.0 if answer in r.optimal_set else max(0.0, r.value - r.move_value(answer))
    pct = 100.0 * regret / r.value if r.value > 0 else None
    scores = None
    if stated_p is not None:
        if r.p_top is None:
            raise QuizError(f"round {r.number} has no reward left to ask a probability about")
        if not (0.0 <= stated_p <= 1.0):
            raise QuizError(f"a stated probability must be in [0, 1], got {stated_p}")
        scores = calibration_scores(stated_p, r.p_top)
    return Scored(
        round=r,
        answer=answer,
        regret=regret,
        regret_pct=pct,
        stated_p=stated_p,
        scores=scores,
    )
