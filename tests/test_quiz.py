"""derisk quiz: rounds, scoring, calibration, the session store, the command line.

Reference numbers come from hand computation on tiny roadmaps and from a brute-force
recursion over raw histories (below, and `reference.brute_force_value`) that shares no
code with the planner.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import select
import sqlite3
import subprocess
import sys
import time
from functools import cache

import pytest
from conftest import run, run_json
from reference import _cost_dist, brute_force_value

from derisk.graphs import Conditional, roadmap_from_dict
from derisk.planner import compile_roadmap, solve
from derisk.quiz import (
    LEVELS,
    MIN_SPREAD,
    STOP,
    AnswerError,
    QuizError,
    QuizStore,
    QuizStoreError,
    calibration_scores,
    generate_rounds,
    make_round,
    parse_answer,
    parse_probability,
    policy_rounds,
    quiz_stats,
    read_history,
    roadmap_dict,
    score,
)

SCHEMA = {
    "round",
    "level",
    "roadmap",
    "answer",
    "optimal",
    "optimal_set",
    "regret",
    "regret_pct",
    "heuristics",
}


@pytest.fixture(autouse=True)
def quiz_db(tmp_path, monkeypatch):
    """Every test writes its quiz history under tmp_path, never in the user's data dir."""
    path = tmp_path / "quiz.sqlite"
    monkeypatch.setenv("DERISK_QUIZ", str(path))
    return path


pytestmark = pytest.mark.filterwarnings("ignore::derisk.errors.DeriskWarning")


def tiny(experiments, budget, **top):
    return roadmap_from_dict({"name": "tiny", "budget": budget, "experiments": experiments, **top})


def round_of(roadmap, **kw):
    return make_round(roadmap, solve(compile_roadmap(roadmap)), number=1, **kw)


# ---------------------------------------------------------------- brute force Q


def brute_q(roadmap, first: str) -> float:
    """Value of running `first` now and acting optimally after, by plain recursion over
    raw histories (no canonical states, no budget vectors, beliefs by enumerating
    hypothesis configurations); "stop" is 0."""
    if first == STOP:
        return 0.0
    exps = roadmap.experiments
    ids = [e.id for e in exps]
    res = roadmap.effective_resolution()
    budget = math.floor(roadmap.budget / res + 1e-9)
    price = roadmap.compute_price * res
    hyps = list(roadmap.hypotheses)
    configs = list(itertools.product((True, False), repeat=len(hyps)))
    costs = [_cost_dist(e.cost, res) for e in exps]

    def p_of(e, cfg):
        if isinstance(e.p, Conditional):
            return e.p.then if cfg[hyps.index(e.p.hypothesis)] else e.p.otherwise
        return e.p

    def posterior_p(i, history):
        num = den = 0.0
        for cfg in configs:
            w = math.prod(
                roadmap.hypotheses[h] if v else 1 - roadmap.hypotheses[h]
                for h, v in zip(hyps, cfg, strict=True)
            )
            for e, h in zip(exps, history, strict=True):
                if h is True:
                    w *= p_of(e, cfg)
                elif h is False:
                    w *= 1 - p_of(e, cfg)
            num += w * p_of(exps[i], cfg)
            den += w
        return num / den

    def can_run(i, history, b):
        return (
            history[i] is None
            and all(any(history[ids.index(a)] is True for a in c) for c in exps[i].requires)
            and costs[i][0][0] <= b
        )

    def q(i, history, b):
        p = posterior_p(i, history)
        total = 0.0
        for c, w in costs[i]:
            if c <= b:
                ok = history[:i] + (True,) + history[i + 1 :]
                ko = history[:i] + (False,) + history[i + 1 :]
                total += w * (
                    p * (exps[i].reward + best(ok, b - c)) + (1 - p) * best(ko, b - c) - price * c
                )
            else:  # cut off by the budget: all of it spent, a failure without evidence
                cut = history[:i] + ("cut",) + history[i + 1 :]
                total += w * (best(cut, 0) - price * b)
        return total

    @cache
    def best(history, b):
        return max([0.0] + [q(i, history, b) for i in range(len(exps)) if can_run(i, history, b)])

    return q(ids.index(first), (None,) * len(exps), budget)


# ---------------------------------------------------------------- scoring, by hand


def two_choices():
    # Budget for one run: a pays 0.5 x 10 = 5, b pays 0.9 x 8 = 7.2.
    return tiny(
        [
            {"id": "a", "p": 0.5, "cost": 5, "reward": 10},
            {"id": "b", "p": 0.9, "cost": 5, "reward": 8},
        ],
        5,
    )


def test_scoring_on_a_roadmap_with_a_known_answer():
    r = round_of(two_choices())
    assert r.optimal == "b" and r.optimal_set == ("b",)
    assert r.value == pytest.approx(7.2)
    assert r.q == pytest.approx({"a": 5.0, "b": 7.2})
    s = score(r, "a")
    assert s.regret == pytest.approx(2.2)
    assert s.regret_pct == pytest.approx(100 * 2.2 / 7.2)
    assert score(r, "b").regret == 0.0
    assert score(r, STOP).regret == pytest.approx(7.2)
    assert score(r, STOP).regret_pct == pytest.approx(100.0)
    # log(1/p)/cost: a ln 2 / 5 beats b ln(1/0.9) / 5; equal costs: cheapest takes the
    # first; p x reward / cost: b (1.44) beats a (1.0).
    assert r.heuristics["steinhardt"] == "a"
    assert r.heuristics["cheapest"] == "a"
    assert r.heuristics["greedy"] == "b"
    assert r.trap


def test_tied_moves_all_score_zero():
    r = round_of(
        tiny(
            [
                {"id": "x", "p": 0.6, "cost": 2, "reward": 10},
                {"id": "y", "p": 0.6, "cost": 2, "reward": 10},
            ],
            4,
        )
    )
    assert set(r.optimal_set) == {"x", "y"}
    assert r.optimal in r.optimal_set
    assert score(r, "x").regret == 0.0 and score(r, "y").regret == 0.0
    assert r.value == pytest.approx(12.0)  # both run: 2 x 0.6 x 10


def test_a_pointless_experiment_is_a_valid_move_that_wastes_compute():
    # u leads to no reward; with a price of 1 per unit its 3 units are lost for nothing.
    roadmap = tiny(
        [
            {"id": "a", "p": 0.5, "cost": 2, "reward": 10},
            {"id": "u", "p": 0.5, "cost": 3},
        ],
        10,
        compute_price=1,
    )
    r = round_of(roadmap)
    assert r.runnable == ("a", "u")
    assert r.value == pytest.approx(0.5 * 10 - 2)
    assert r.q["u"] == pytest.approx(3.0 - 3.0)
    assert score(r, "u").regret == pytest.approx(3.0)
    assert r.q["u"] == pytest.approx(brute_q(roadmap, "u"))


def test_exact_probability_of_the_top_reward_and_its_scores():
    # a then b: the plan runs both, b pays if both succeed: 0.5 x 0.8.
    roadmap = tiny(
        [
            {"id": "a", "p": 0.5, "cost": 1},
            {"id": "b", "p": 0.8, "cost": 1, "reward": 10, "after": ["a"]},
            {"id": "c", "p": 0.9, "cost": 1, "reward": 3},
        ],
        5,
    )
    r = round_of(roadmap, calibration=True)
    assert r.top == "b" and r.calibration
    assert r.p_top == pytest.approx(0.4)
    s = score(r, r.optimal, stated_p=0.5)
    assert s.scores["brier"] == pytest.approx(0.1**2 + 0.4 * 0.6)
    assert s.scores["log"] == pytest.approx(math.log(2))
    assert s.scores["brier_best"] == pytest.approx(0.24)
    assert s.scores["log_best"] == pytest.approx(-(0.4 * math.log(0.4) + 0.6 * math.log(0.6)))
    # an answer of 0 is clipped, not infinite
    assert calibration_scores(0.0, 0.5)["log"] == pytest.approx(
        -math.log(1e-3) / 2 - math.log(1 - 1e-3) / 2
    )


def test_answers_by_id_row_and_stop_and_refusals_name_the_valid_ones():
    roadmap = tiny(
        [
            {"id": "Pilot", "p": 0.5, "cost": 1},
            {"id": "big", "p": 0.8, "cost": 1, "reward": 10, "after": ["Pilot"]},
            {"id": "side", "p": 0.9, "cost": 1, "reward": 3},
        ],
        5,
    )
    r = round_of(roadmap)
    assert parse_answer(r, "Pilot") == "Pilot"
    assert parse_answer(r, " pilot ") == "Pilot"
    assert parse_answer(r, "3") == "side"
    assert parse_answer(r, "STOP") == STOP
    for bad, why in (
        ("2", "big needs Pilot"),
        ("big", "big needs Pilot"),
        ("zz", "not an"),
        ("9", "not an"),
        ("", "no answer"),
    ):
        with pytest.raises(AnswerError) as exc:
            parse_answer(r, bad)
        assert why in str(exc.value)
        assert "Pilot (row 1), side (row 3), stop" in str(exc.value)
        assert exc.value.valid == ("Pilot", "side", STOP)
    assert parse_probability("40%") == pytest.approx(0.4)
    assert parse_probability(".25") == 0.25
    for bad in ("1.5", "-0.1", "nan", "x"):
        with pytest.raises(QuizError):
            parse_probability(bad)


# ---------------------------------------------------------------- generated rounds


def test_levels_grow_in_size_hypotheses_stochastic_costs_and_tightness():
    specs = [LEVELS[k] for k in sorted(LEVELS)]
    assert sorted(LEVELS) == [1, 2, 3, 4, 5]
    for lo, hi in itertools.pairwise(specs):
        assert hi.n > lo.n
        assert hi.hypotheses >= lo.hypotheses
        assert hi.stochastic_costs >= lo.stochastic_costs
        assert hi.budget_fraction < lo.budget_fraction
    assert specs[-1].hypotheses > specs[0].hypotheses
    assert specs[-1].stochastic_costs > specs[0].stochastic_costs


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_generated_rounds_teach_something(level):
    rounds = list(generate_rounds(seed=11, level=level, count=6))
    spec = LEVELS[level]
    traps = 0
    for r in rounds:
        assert len(r.roadmap.experiments) == spec.n
        assert len(r.roadmap.hypotheses) == spec.hypotheses
        # some runnable experiment loses more than 2% of the optimal value
        assert max(r.value - v for v in r.q.values()) > MIN_SPREAD * r.value > 0
        assert r.optimal in r.optimal_set
        wrong = [
            h for h in ("steinhardt", "cheapest") if (r.heuristics[h] or STOP) not in r.optimal_set
        ]
        traps += bool(wrong)
        if r.number % 3 == 1:
            assert wrong, f"round {r.number} must be one a rule gets wrong"
        if r.calibration:
            assert 0.02 < r.p_top < 0.98
    assert traps >= len(rounds) / 3
    assert [r.calibration for r in rounds] == [False, True, False, False, True, False]


@pytest.mark.parametrize("level", [1, 3])
def test_round_values_match_brute_force(level):
    for r in generate_rounds(seed=2, level=level, count=3):
        assert brute_force_value(r.roadmap) == pytest.approx(r.value, abs=1e-9)
        for move in r.choices:
            assert brute_q(r.roadmap, move) == pytest.approx(r.move_value(move), abs=1e-9)


def test_same_seed_same_rounds_and_longer_sessions_extend_shorter_ones():
    def key(rounds):
        return [(r.roadmap.name, r.optimal, r.optimal_set, r.value) for r in rounds]

    a = key(generate_rounds(seed=21, level=3, count=4))
    assert a == key(generate_rounds(seed=21, level=3, count=4))
    assert a[:2] == key(generate_rounds(seed=21, level=3, count=2))
    assert a != key(generate_rounds(seed=22, level=3, count=4))
    assert a != key(generate_rounds(seed=21, level=4, count=4))


def test_roadmap_dict_loads_back_to_the_same_roadmap():
    for r in generate_rounds(seed=3, level=5, count=2):
        back = roadmap_from_dict(json.loads(json.dumps(roadmap_dict(r.roadmap))))
        assert back.experiments == r.roadmap.experiments
        assert back.hypotheses == r.roadmap.hypotheses
        assert back.budget == r.roadmap.budget


def test_bad_quiz_settings_are_refused():
    with pytest.raises(QuizError, match="--level"):
        next(generate_rounds(seed=1, level=6, count=1))
    with pytest.raises(QuizError, match="--rounds"):
        next(generate_rounds(seed=1, level=1, count=0))


# ---------------------------------------------------------------- a real roadmap


def test_policy_rounds_are_the_states_the_optimal_policy_reaches(tmp_path):
    from derisk.graphs import example_path, load_roadmap

    roadmap = load_roadmap(example_path("two-approaches"))
    sol = solve(compile_roadmap(roadmap))
    policy = sol.as_policy()
    rounds = list(policy_rounds(roadmap))
    assert rounds[0].outcomes == {} and rounds[0].budget_left == roadmap.budget
    assert len(rounds) >= 3
    for r in rounds:
        # the state's own re-solve agrees with the whole roadmap's solution there
        assert r.value == pytest.approx(policy.value(r.outcomes, r.budget_left), abs=1e-9)
        assert policy.action(r.outcomes, r.budget_left) in r.optimal_set
    # each later state follows an earlier one by one outcome of that state's optimal move
    for r in rounds[1:]:
        *before, last = r.outcomes.items()
        parent = [q for q in rounds if list(q.outcomes.items()) == before]
        assert parent and parent[0].optimal == last[0]
    assert len({(tuple(r.outcomes.items()), r.budget_left) for r in rounds}) == len(rounds)
    assert len(list(policy_rounds(roadmap, count=2))) == 2


# ---------------------------------------------------------------- the session store


def _answers_for(rounds, picks):
    return [score(r, m) for r, m in zip(rounds, picks, strict=True)]


def test_stats_from_a_stored_history(quiz_db):
    r1 = round_of(two_choices())  # optimal b (7.2); a loses 2.2
    r2 = round_of(
        tiny(
            [
                {"id": "a", "p": 0.5, "cost": 1},
                {"id": "b", "p": 0.8, "cost": 1, "reward": 10, "after": ["a"]},
                {"id": "c", "p": 0.9, "cost": 1, "reward": 3},
            ],
            5,
        ),
        calibration=True,
    )  # P(b's reward) = 0.4
    with QuizStore(quiz_db) as store:
        s1 = store.start_session(mode="scripted", level=1, seed=1, started=1000.0)
        store.add(s1, [score(r1, "a"), score(r1, "b")])
        s2 = store.start_session(mode="interactive", level=2, seed=2, started=2000.0)
        store.add(s2, [score(r1, STOP), score(r2, r2.optimal, stated_p=0.45)])
        store.add(s2, [score(r2, r2.optimal, stated_p=0.05)])
        store.start_session(mode="interactive", started=3000.0)  # quit before answering
    st = quiz_stats(*read_history(quiz_db))
    assert st.answers == 5
    assert [s["id"] for s in st.sessions] == [s1, s2]
    assert st.sessions[0]["mean_regret"] == pytest.approx(2.2 / 2)
    assert st.sessions[0]["mean_regret_pct"] == pytest.approx(100 * 2.2 / 7.2 / 2)
    assert st.sessions[1]["mean_regret"] == pytest.approx(7.2 / 3)
    assert st.sessions[1]["mean_regret_pct"] == pytest.approx(100 / 3)
    assert st.sessions[0]["optimal"] == 0.5 and st.sessions[1]["optimal"] == pytest.approx(2 / 3)
    cal = st.calibration
    assert cal["count"] == 2
    counts = {(b["lo"], b["count"]) for b in cal["bins"] if b["count"]}
    assert counts == {(0.0, 1), (0.4, 1)}
    b4 = next(b for b in cal["bins"] if b["lo"] == 0.4)
    assert b4["stated"] == pytest.approx(0.45) and b4["exact"] == pytest.approx(0.4)
    assert cal["brier"] == pytest.approx(((0.05**2 + 0.24) + (0.35**2 + 0.24)) / 2)
    ag = st.agreement
    assert ag["optimal"] == pytest.approx(3 / 5)
    # Steinhardt picks a in r1 (wrong) and a in r2 (the optimal move there).
    assert r2.heuristics["steinhardt"] == "a" == r2.optimal
    assert ag["rules"]["steinhardt"]["agree"] == pytest.approx(3 / 5)
    assert ag["rules"]["steinhardt"]["agree_when_wrong"] == pytest.approx(1 / 3)
    assert ag["rules"]["greedy"]["agree"] == pytest.approx(1 / 5)
    assert st.plays_like in ("steinhardt", "least_cost", "cheapest")
    # the command line reads the same history
    data = run_json("quiz", "--stats")
    assert data["answers"] == 5 and data["calibration"]["count"] == 2
    assert data["sessions"][1]["mean_regret"] == pytest.approx(7.2 / 3)
    text = run("quiz", "--stats")
    assert (
        text.exit_code == 0 and "Calibration" in text.stdout and "You play most like" in text.stdout
    )


def test_stats_without_history_and_refusing_foreign_files(tmp_path, quiz_db):
    data = run_json("quiz", "--stats")
    assert data["answers"] == 0 and data["sessions"] == []
    assert not quiz_db.exists()  # reading creates nothing
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    for path in (other,):
        with pytest.raises(QuizStoreError, match="not a derisk quiz history"):
            QuizStore(path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    res = run("quiz", "--stats", "--db", text)
    assert res.exit_code == 2 and "not an SQLite database" in res.stderr
    res = run("quiz", "--seed", 1, "--answers", "stop", "--db", other)
    assert res.exit_code == 2 and "not a derisk quiz history" in res.stderr
    assert text.read_text() == "hello"


# ---------------------------------------------------------------- the command line


def test_scripted_session_prints_the_schema_and_is_stored(quiz_db):
    data = run_json("quiz", "--seed", 5, "--level", 2, "--rounds", 3, "--answers", "stop,stop,stop")
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3]
    for r in data["rounds"]:
        assert set(r) == SCHEMA
        assert r["level"] == 2 and r["answer"] == STOP
        assert r["optimal"] in r["optimal_set"]
        assert set(r["heuristics"]) == {"steinhardt", "least_cost", "cheapest", "greedy"}
        assert r["regret_pct"] == pytest.approx(100.0)
    sessions, answers = read_history(quiz_db)
    assert len(sessions) == 1 and sessions[0]["mode"] == "scripted" and sessions[0]["seed"] == 5
    assert len(answers) == 3
    # the same seed replays the same rounds
    again = run_json("quiz", "--seed", 5, "--level", 2, "--answers", "stop,stop,stop", "--no-save")
    assert again == data
    assert len(read_history(quiz_db)[1]) == 3  # --no-save stored nothing


@pytest.mark.parametrize("level", [1, 2, 3])
def test_optimal_answers_score_zero_and_steinhardt_scores_the_brute_force_regret(level):
    args = ("quiz", "--seed", 8, "--level", level, "--no-save")
    first = run_json(*args, "--answers", "stop,stop,stop,stop")["rounds"]
    best = run_json(*args, "--answers", ",".join(r["optimal"] for r in first))["rounds"]
    assert [r["regret"] for r in best] == [0.0] * 4
    assert [r["regret_pct"] for r in best] == [0.0] * 4
    ties = [r for r in first if len(r["optimal_set"]) > 1]
    if ties:  # any member of the tie set scores zero
        alt = [r["optimal_set"][-1] for r in first]
        assert all(
            r["regret"] == 0.0 for r in run_json(*args, "--answers", ",".join(alt))["rounds"]
        )
    picks = [r["heuristics"]["steinhardt"] or STOP for r in first]
    played = run_json(*args, "--answers", ",".join(picks))["rounds"]
    assert any(r["regret"] > 0 for r in played)  # round 1 is a trap for one of two rules
    for r, pick in zip(played, picks, strict=True):
        roadmap = roadmap_from_dict(r["roadmap"])
        v = brute_force_value(roadmap)
        regret = v - brute_q(roadmap, pick)
        if regret < 1e-9:  # tied with the optimum
            assert r["regret"] == 0.0
        else:
            assert r["regret"] == pytest.approx(regret, abs=1e-9)
            assert r["regret_pct"] == pytest.approx(100 * regret / v)


def test_answers_on_stdin_and_calibration_answers():
    a = run_json("quiz", "--seed", 4, "--level", 1, "--answers", "1,1", "--no-save")
    b = run("quiz", "--seed", 4, "--level", 1, "--no-save", "--json", input="1\n\n1\n")
    assert b.exit_code == 0, b.output
    assert json.loads(b.stdout) == a
    c = run_json(
        "quiz", "--seed", 4, "--level", 1, "--answers", "1,1", "--probabilities", "30%", "--no-save"
    )["rounds"]
    assert "calibration" not in c[0]
    cal = c[1]["calibration"]
    assert cal["stated"] == pytest.approx(0.3)
    assert cal["brier"] == pytest.approx(
        (0.3 - cal["exact"]) ** 2 + cal["exact"] * (1 - cal["exact"])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("--answers", "zz,stop"), "answer one of"),
        (("--answers", "stop", "--rounds", "2"), "gives 1 answers for --rounds 2"),
        (("--answers", "stop,,stop"), "empty item"),
        (("--level", "9", "--answers", "stop"), "--level must be one of 1, 2, 3, 4, 5"),
        (("--answers", "stop,stop", "--probabilities", "0.5,0.5"), "calibration"),
        (("--answers", "stop", "--probabilities", "2"), "not a probability"),
        (("--probabilities", "0.5"), "no answers: stdin is not a terminal"),
        (("--roadmap", "nope.yaml", "--answers", "stop"), "nope.yaml"),
    ],
)
def test_mistakes_exit_2_with_the_fix(args, message):
    seed = () if "--roadmap" in args else ("--seed", 3)
    res = run("quiz", *seed, "--no-save", *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert "Traceback" not in res.output


def test_an_invalid_answer_names_the_valid_answers():
    first = run_json("quiz", "--seed", 3, "--level", 1, "--answers", "stop", "--no-save")["rounds"][
        0
    ]
    blocked = [e["id"] for e in first["roadmap"]["experiments"] if e.get("after")]
    res = run("quiz", "--seed", 3, "--level", 1, "--answers", blocked[0], "--no-save", "--json")
    assert res.exit_code == 2 and res.stdout == ""
    assert "needs" in res.stderr and "stop" in res.stderr and "(row 1)" in res.stderr


def test_quiz_on_a_roadmap_file(tmp_path):
    from conftest import copy_example

    path = copy_example(tmp_path, "two-approaches")
    rounds = run_json("quiz", "--roadmap", path, "--answers", "stop,stop,stop", "--no-save")[
        "rounds"
    ]
    assert rounds[0]["roadmap"]["recorded"] == {} and rounds[0]["level"] is None
    assert rounds[1]["roadmap"]["recorded"] == {rounds[0]["optimal"]: "success"}
    assert rounds[2]["roadmap"]["recorded"] == {rounds[0]["optimal"]: "failure"}
    res = run("quiz", "--roadmap", path, "--answers", ",".join(["stop"] * 30), "--no-save")
    assert res.exit_code == 2 and "reaches only" in res.stderr
    res = run("quiz", "--roadmap", path, "--level", "2", "--answers", "stop")
    assert res.exit_code == 2 and "--level is for generated roadmaps" in res.stderr


# ---------------------------------------------------------------- a real terminal


def _read_until(fd, proc, needle: str, seen: list[str], timeout=60.0) -> str:
    """Read the pseudo-terminal until `needle` shows up (or the process ends)."""
    end = time.monotonic() + timeout
    text = ""
    while needle not in text:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {timeout}s; got:\n{''.join(seen)}{text}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 4096).decode(errors="replace")
            except OSError:  # the child closed the terminal
                chunk = ""
            if not chunk and proc.poll() is not None:
                break
            text += chunk
        elif proc.poll() is not None:
            break
    seen.append(text)
    return text


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_session_through_a_pseudo_terminal(quiz_db):
    import pty

    rounds = list(generate_rounds(seed=6, level=2, count=2))
    master, slave = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "derisk.cli",
            "quiz",
            "--seed",
            "6",
            "--level",
            "2",
            "--rounds",
            "2",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen: list[str] = []
    try:
        screen = _read_until(master, proc, "Next experiment", seen)
        assert rounds[0].roadmap.name in screen
        assert "\t" not in screen
        assert max(len(line) for line in screen.splitlines()) <= 100
        os.write(master, b"nonsense\n")
        again = _read_until(master, proc, "Next experiment", seen)
        assert "not valid" in again and "stop" in again
        os.write(master, f"{rounds[0].optimal}\n".encode())
        reveal = _read_until(master, proc, "Next experiment", seen)
        assert "optimal, no regret" in reveal and "Why:" in reveal
        os.write(master, b"stop\n")
        _read_until(master, proc, "Probability that the optimal plan", seen)
        os.write(master, b"0.5\n")
        tail = _read_until(master, proc, "Replay these rounds", seen)
        assert "Calibration:" in tail and "regret" in tail
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    sessions, answers = read_history(quiz_db)
    assert [s["mode"] for s in sessions] == ["interactive"]
    assert [a["answer"] for a in answers] == [rounds[0].optimal, STOP]
    assert answers[0]["regret"] == 0.0
    assert answers[1]["regret"] == pytest.approx(rounds[1].value)
    assert answers[1]["stated_p"] == 0.5
    assert answers[1]["exact_p"] == pytest.approx(rounds[1].p_top)
    st = quiz_stats(sessions, answers)
    assert st.agreement["optimal"] == 0.5


def test_text_output_fits_100_columns():
    res = run("quiz", "--seed", 2, "--level", 5, "--rounds", 2, "--answers", "stop,1", "--no-save")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert any(line.startswith("Why:") for line in lines)
    assert "Replay these rounds: derisk quiz --seed 2 --level 5 --rounds 2" in res.stdout
