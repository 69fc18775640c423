"""Teaching research taste: choose the next experiment, scored against the exact optimum.

Rounds come from seeded generated roadmaps (`generate_rounds`, five levels) or from the
states the optimal policy reaches in a real roadmap (`policy_rounds`). A round knows the
value of every move, the moves tied with the best, each heuristic's pick, and the exact
probability that the optimal plan earns the top reward; `score` turns an answer into
regret (and Brier and log scores for a stated probability). Sessions are kept in SQLite
(`QuizStore`) and summarised by `quiz_stats`.

>>> from derisk.quiz import generate_rounds, score
>>> r = next(generate_rounds(seed=3, level=2, count=1))
>>> score(r, r.optimal).regret, r.optimal in r.optimal_set
(0.0, True)
"""

from derisk.quiz._rounds import (
    LEVELS,
    MIN_SPREAD,
    RULES,
    STOP,
    TIE_TOLERANCE,
    Level,
    QuizError,
    Round,
    check_level,
    generate_rounds,
    level_roadmap,
    make_round,
    policy_rounds,
    roadmap_dict,
)
from derisk.quiz._score import (
    AnswerError,
    Scored,
    calibration_scores,
    parse_answer,
    parse_probability,
    round_roadmap,
    score,
    valid_text,
)
from derisk.quiz._store import (
    QuizStats,
    QuizStore,
    QuizStoreError,
    default_db,
    quiz_stats,
    read_history,
)

__all__ = [
    "LEVELS",
    "MIN_SPREAD",
    "RULES",
    "STOP",
    "TIE_TOLERANCE",
    "AnswerError",
    "Level",
    "QuizError",
    "QuizStats",
    "QuizStore",
    "QuizStoreError",
    "Round",
    "Scored",
    "calibration_scores",
    "check_level",
    "default_db",
    "generate_rounds",
    "level_roadmap",
    "make_round",
    "parse_answer",
    "parse_probability",
    "policy_rounds",
    "quiz_stats",
    "read_history",
    "roadmap_dict",
    "round_roadmap",
    "score",
    "valid_text",
]
