"""`derisk quiz`: choose the next experiment, scored against the exact optimum."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from derisk.cli._output import JsonOpt, command, emit, err, fmt, out, print_chart, progress
from derisk.errors import DeriskError
from derisk.graphs import describe_p

WIDTH = 100  # a round fits in 100 columns
DEFAULT_ROUNDS = 5
MAX_FILE_ROUNDS = 20  # states of a real roadmap quizzed on when --rounds is not given
RULE_NAMES = {
    "steinhardt": "Steinhardt's rule",
    "least_cost": "least cost",
    "cheapest": "cheapest first",
    "greedy": "greedy",
}


def _w(console: Console) -> int:
    return min(WIDTH, console.width)


# ---------------------------------------------------------------- rendering a round


def _p_text(e) -> str:
    return describe_p(e.p, digits=2) if not isinstance(e.p, float | int) else f"{e.p:g}"


def _pp(p: float) -> str:
    """A posterior p: three decimals, never rounded to a certainty it is not."""
    return fmt(p, p=True, derived=True)


def _cost_text(e) -> str:
    if e.cost.stochastic:
        return f"{fmt(e.cost.median)} (p90 {fmt(e.cost.p90)})"
    return fmt(e.cost.median)


def _after_text(e) -> str:
    parts = [c[0] if len(c) == 1 else "one of " + "/".join(c) for c in e.requires]
    return ", ".join(parts) or "-"


def render_round(screen: Console, r, total: int | None) -> None:
    """The roadmap at this decision, compactly: one row per experiment."""
    rm = r.roadmap
    unit = rm.unit_label()
    of = f"/{total}" if total else ""
    where = f"level {r.level}" if r.level is not None else escape(str(r.source))
    screen.print()
    title = f"[bold]Round {r.number}{of}[/] - {where} - {escape(rm.name)}"
    screen.print(Rule(title, style="dim"), width=_w(screen))
    head = f"budget left {fmt(r.budget_left, unit)}"
    if rm.compute_price:
        head += f"; each unit of compute spent costs {fmt(rm.compute_price)} reward"
    screen.print(head, width=_w(screen))
    if r.outcomes:
        screen.print(
            "so far: " + escape(", ".join(f"{k} {v}" for k, v in r.outcomes.items())),
            width=_w(screen),
        )
    posts = r.posteriors()
    if posts:
        screen.print(
            "hypotheses now: " + ", ".join(f"P({escape(h)}) = {_pp(v)}" for h, v in posts.items()),
            width=_w(screen),
        )
    p_now = r.p_now()
    t = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    t.add_column("#", justify="right")
    t.add_column("id", no_wrap=True)
    t.add_column("p", overflow="fold", min_width=20, max_width=34)
    if posts:
        t.add_column("p now", justify="right")
    t.add_column(f"cost{f' ({unit})' if unit else ''}", justify="right", overflow="fold")
    t.add_column("reward", justify="right")
    t.add_column("after", overflow="fold", max_width=18)
    t.add_column("status")
    for k, e in enumerate(rm.experiments, 1):
        done = r.outcomes.get(e.id)
        status = done or ("[bold green]ready[/]" if e.id in r.q else "[dim]-[/]")
        cells = [str(k), escape(e.id), escape(_p_text(e))]
        if posts:
            cells.append(_pp(p_now[e.id]))
        cells += [
            escape(_cost_text(e)),
            fmt(e.reward) if e.reward else "-",
            escape(_after_text(e)),
            status,
        ]
        t.add_row(*cells)
    screen.print(t, width=_w(screen))


def _moves_table(r, ex) -> Table:
    rows = {a.id: a for a in ex.actions}
    t = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for col in ("move", "p now", "mean cost", "value", "regret", "picked by"):
        t.add_column(col, justify="left" if col in ("move", "picked by") else "right")
    p_now = r.p_now()
    cost = dict(zip(r.problem.ids, r.problem.mean_cost * r.problem.resolution, strict=True))
    moves = sorted(r.choices, key=lambda m: -r.move_value(m))
    for m in moves:
        by = [RULE_NAMES[k] for k, v in r.heuristics.items() if (v or "stop") == m]
        regret = 0.0 if m in r.optimal_set else r.value - r.move_value(m)
        mark = " *" if m in r.optimal_set else ""
        a = rows.get(m)
        t.add_row(
            escape(m) + mark,
            "-" if m == "stop" else _pp(a.p if a else p_now[m]),
            "-" if m == "stop" else fmt(cost[m]),
            fmt(r.move_value(m), derived=True),
            fmt(regret, derived=True),
            ", ".join(by),
        )
    return t


def render_reveal(screen: Console, s, ex) -> None:
    """The optimal move and its ties, the regret, each rule's pick and why."""
    r = s.round
    ties = [m for m in r.optimal_set if m != r.optimal]
    tied = f" (tied with {escape(', '.join(ties))})" if ties else ""
    screen.print(
        f"[bold green]Optimal:[/] [bold]{escape(r.optimal)}[/]{tied}; the plan is worth "
        f"{fmt(r.value, derived=True)}",
        width=_w(screen),
    )
    if s.optimal:
        screen.print(f"[bold]You:[/] {escape(s.answer)} - optimal, no regret", width=_w(screen))
    else:
        pct = "" if s.regret_pct is None else f" ({s.regret_pct:.1f}% of the optimal value)"
        screen.print(
            f"[bold]You:[/] {escape(s.answer)} - [bold red]regret "
            f"{fmt(s.regret, derived=True)}[/]{pct}",
            width=_w(screen),
        )
    screen.print(_moves_table(r, ex), width=_w(screen))
    screen.print("* optimal (ties within 1e-6 of the best)", style="dim", width=_w(screen))
    screen.print(f"[bold]Why:[/] {escape(ex.summary)}", width=_w(screen))
    if s.stated_p is not None:
        sc = s.scores
        screen.print(
            f"[bold]Calibration:[/] P(the optimal plan earns {escape(r.top)}'s reward): you "
            f"said {s.stated_p:.2f}, exactly {r.p_top:.3f}. Brier {sc['brier']:.3f} "
            f"(best {sc['brier_best']:.3f}), log {sc['log']:.3f} (best {sc['log_best']:.3f}).",
            width=_w(screen),
        )


def render_summary(screen: Console, scored: list, saved: Path | None, replay: str | None) -> None:
    if not scored:
        screen.print("No round answered.")
        return
    n = len(scored)
    good = sum(s.optimal for s in scored)
    total = sum(s.regret for s in scored)
    pcts = [s.regret_pct for s in scored if s.regret_pct is not None]
    mean_pct = f" ({sum(pcts) / len(pcts):.1f}% of the optimal value)" if pcts else ""
    screen.print()
    screen.print(
        f"[bold]Session:[/] {good}/{n} optimal moves; mean regret "
        f"{fmt(total / n, derived=True)}{mean_pct}.",
        width=_w(screen),
    )
    agree = []
    for rule in RULE_NAMES:
        k = sum(s.answer == (s.round.heuristics[rule] or "stop") for s in scored)
        agree.append(f"{RULE_NAMES[rule]} {k}/{n}")
    screen.print("Your moves matched: " + ", ".join(agree) + ".", width=_w(screen))
    if saved is not None:
        screen.print(f"Saved to {escape(str(saved))}; `derisk quiz --stats` shows your progress.")
    if replay:
        screen.print(f"Replay these rounds: {escape(replay)}", width=_w(screen))


# ---------------------------------------------------------------- stats


def render_stats(st, db: Path) -> None:
    if not st.answers:
        out.print(f"No quiz answers stored in {escape(str(db))} yet: play with `derisk quiz`.")
        return
    t = Table(title="Sessions", title_justify="left", header_style="bold")
    for col in ("#", "started", "level", "rounds", "optimal", "mean regret", "% of optimum"):
        t.add_column(col, justify="left" if col == "started" else "right")
    for s in st.sessions:
        t.add_row(
            str(s["id"]),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(s["started"])),
            "-" if s["level"] is None else str(s["level"]),
            str(s["rounds"]),
            f"{s['optimal']:.0%}",
            fmt(s["mean_regret"], derived=True),
            "-" if s["mean_regret_pct"] is None else f"{s['mean_regret_pct']:.1f}%",
        )
    out.print(t, width=_w(out))
    pcts = [(k, s["mean_regret_pct"]) for k, s in enumerate(st.sessions, 1)]
    pcts = [(k, v) for k, v in pcts if v is not None]
    if len(pcts) >= 2:
        import plotext as plt

        plt.clear_figure()
        plt.plot([k for k, _ in pcts], [v for _, v in pcts], marker="dot")
        plt.title("mean regret per session, % of the optimal value (lower is better)")
        plt.xlabel("session")
        plt.xticks([k for k, _ in pcts])
        print_chart(plt)
    cal = st.calibration
    if cal["count"]:
        t = Table(
            title=f"Calibration ({cal['count']} answers)", title_justify="left", header_style="bold"
        )
        for col in ("you said", "answers", "mean said", "mean exact"):
            t.add_column(col, justify="left" if col == "you said" else "right")
        for b in cal["bins"]:
            if b["count"]:
                t.add_row(
                    f"{b['lo']:.1f}-{b['hi']:.1f}",
                    str(b["count"]),
                    f"{b['stated']:.2f}",
                    f"{b['exact']:.3f}",
                )
        out.print(t, width=_w(out))
        out.print(
            f"mean Brier {cal['brier']:.3f} (best {cal['brier_best']:.3f}), mean log "
            f"{cal['log']:.3f} (best {cal['log_best']:.3f}). Well calibrated is mean exact "
            "close to mean said in every row.",
            width=_w(out),
        )
    ag = st.agreement
    t = Table(title=f"Agreement ({st.answers} answers)", title_justify="left", header_style="bold")
    for col in ("with", "agree", "when the rule is not optimal"):
        t.add_column(col, justify="left" if col == "with" else "right")
    t.add_row("the optimum", f"{ag['optimal']:.0%}", "")
    for rule, a in ag["rules"].items():
        wrong = "-" if a["agree_when_wrong"] is None else (
            f"{a['agree_when_wrong']:.0%} of {a['wrong_rounds']}"
        )  # fmt: skip
        t.add_row(RULE_NAMES[rule], "-" if a["agree"] is None else f"{a['agree']:.0%}", wrong)
    out.print(t, width=_w(out))
    if st.plays_like:
        out.print(f"You play most like [bold]{RULE_NAMES[st.plays_like]}[/].")


# ---------------------------------------------------------------- the command


def _split(text: str, flag: str) -> list[str]:
    items = [a.strip() for a in text.split(",")]
    if not all(items):
        raise DeriskError(f"{flag} {text!r}: an empty item; separate answers with commas")
    return items


def _rounds_source(roadmap_file, level, seed, count):
    """(rounds iterator, level, seed, replay command)."""
    from derisk.quiz import generate_rounds, policy_rounds

    if roadmap_file is not None:
        for flag, v in (("--level", level), ("--seed", seed)):
            if v is not None:
                raise DeriskError(f"{flag} is for generated roadmaps; drop it with --roadmap")
        from derisk.cli.roadmap import plan_input

        inp = plan_input(roadmap_file, None, False)
        rounds = policy_rounds(
            inp.roadmap,
            count=count or MAX_FILE_ROUNDS,
            outcomes=inp.outcomes,
            spent=inp.spent,
            source=str(roadmap_file),
        )
        return rounds, None, None, None
    level = 1 if level is None else level
    seed = secrets.randbelow(1_000_000) if seed is None else seed
    count = count or DEFAULT_ROUNDS
    rounds = generate_rounds(seed=seed, level=level, count=count)
    replay = f"derisk quiz --seed {seed} --level {level} --rounds {count}"
    return rounds, level, seed, replay


def _ask(screen: Console, prompt: str, parse):
    """Ask until the answer parses; re-asks with the reason and the valid answers."""
    from derisk.quiz import QuizError

    while True:
        text = screen.input(prompt)
        try:
            return parse(text)
        except QuizError as exc:
            screen.print(f"[red]not valid:[/] {escape(str(exc))}", width=_w(screen))


@command
def quiz(
    level: Annotated[
        int | None,
        typer.Option("--level", help="1 (4 experiments, fixed costs) to 5 (8, hypotheses, "
                     "stochastic costs, tight budget). Default 1."),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option("--rounds", help=f"Rounds to play (default {DEFAULT_ROUNDS}, or as many "
                     "as --answers gives)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Same seed and level, same rounds (default: new).")
    ] = None,
    answers: Annotated[
        str | None,
        typer.Option("--answers", help="Play without prompts: one answer per round, "
                     "e.g. e2,3,stop (ids, row numbers or stop). Without it, a stdin that "
                     "is not a terminal gives one answer per line."),
    ] = None,
    probabilities: Annotated[
        str | None,
        typer.Option("--probabilities", help="With --answers or stdin: answers to the "
                     "calibration questions (rounds 2, 5, 8, ...) in order, e.g. 0.4,0.7."),
    ] = None,
    roadmap_file: Annotated[
        Path | None,
        typer.Option("--roadmap", help="Quiz on the states the optimal policy reaches in "
                     "this roadmap instead of generated ones."),
    ] = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Show progress over the stored sessions instead.")
    ] = False,
    db: Annotated[
        Path | None,
        typer.Option("--db", envvar="DERISK_QUIZ", help="Quiz history (SQLite; default "
                     "~/.local/share/derisk/quiz.sqlite)."),
    ] = None,
    no_save: Annotated[
        bool, typer.Option("--no-save", help="Do not store this session.")
    ] = False,
    as_json: JsonOpt = False,
):  # fmt: skip
    """Practise choosing the next experiment: each answer is scored against the exact
    optimum, with the regret, each heuristic's pick and why."""
    from derisk.quiz import (
        QuizStore,
        check_level,
        default_db,
        parse_probability,
        quiz_stats,
        read_history,
    )

    db_path = Path(db) if db is not None else default_db()
    if stats:
        for flag, v in (("--answers", answers), ("--roadmap", roadmap_file)):
            if v is not None:
                raise DeriskError(f"--stats reads the stored sessions; drop {flag}")
        st = quiz_stats(*read_history(db_path))
        if as_json:
            emit({"db": str(db_path), **st.as_dict()})
        else:
            render_stats(st, db_path)
        return
    if level is not None:
        check_level(level)
    if rounds is not None and rounds < 1:
        raise DeriskError(f"--rounds must be at least 1, got {rounds}")
    scripted = answers is not None or not sys.stdin.isatty()
    if probabilities is not None and not scripted:
        raise DeriskError(
            "--probabilities is for sessions answered by --answers or stdin; in a terminal "
            "the calibration questions are asked"
        )
    given: list[str] = []
    if answers is not None:
        given = _split(answers, "--answers")
        where = "--answers"
    elif scripted:
        given = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
        where = "stdin"
        if not given:
            raise DeriskError(
                "no answers: stdin is not a terminal and gave none; pass --answers e1,e2,stop "
                "or one answer per line on stdin, or run in a terminal to be asked"
            )
    if scripted and rounds is not None and rounds != len(given):
        raise DeriskError(
            f"{where} gives {len(given)} answers for --rounds {rounds}; give one per round"
        )
    count = len(given) if scripted else rounds
    source, level, seed, replay = _rounds_source(roadmap_file, level, seed, count)
    store_source = str(roadmap_file) if roadmap_file is not None else None
    if scripted:
        probs = [parse_probability(x) for x in _split(probabilities, "--probabilities")] if (
            probabilities is not None
        ) else []  # fmt: skip
        _play_scripted(
            source, given, where, probs, as_json=as_json,
            save=None if no_save else (db_path, level, seed, store_source), replay=replay,
        )  # fmt: skip
        return
    screen = err if as_json else out
    rm = "" if level is None else f"level {level}, "
    screen.print(
        f"[bold]derisk quiz[/]: {rm}pick the next experiment (or stop) each round; Ctrl-D ends "
        "the session.",
        width=_w(screen),
    )
    store = None if no_save else QuizStore(db_path)  # a bad --db is refused before round 1
    try:
        scored, session = _play_interactive(
            screen, source, count if roadmap_file is None else None, store,
            dict(mode="interactive", level=level, seed=seed, source=store_source),
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        scored, session = exc.args if len(exc.args) == 2 else ([], None)
        render_summary(screen, scored, None if session is None else db_path, replay)
        raise typer.Exit(130) from None
    finally:
        if store is not None:
            store.close()
    render_summary(screen, scored, None if session is None else db_path, replay)
    if as_json:
        emit({"rounds": [s.as_dict() for s in scored]})


def _play_interactive(screen: Console, source, total, store, session_info):
    """Ask round after round; each answer is stored as soon as it is given. Ctrl-D ends
    the session; Ctrl-C too, re-raised with (scored, session) as its arguments."""
    from derisk.planner import explain
    from derisk.quiz import parse_answer, parse_probability, score

    scored: list = []
    session = None
    try:
        for r in source:
            render_round(screen, r, total)
            move = _ask(
                screen,
                "Next experiment (id, row number, or stop): ",
                lambda text, r=r: parse_answer(r, text),
            )
            stated = None
            if r.calibration:
                reward = fmt(r.problem.reward[r.problem.ids.index(r.top)])
                stated = _ask(
                    screen,
                    f"Probability that the optimal plan earns {r.top}'s reward of {reward} "
                    "(0 to 1, or 35%): ",
                    parse_probability,
                )
            s = score(r, move, stated_p=stated)
            scored.append(s)
            if store is not None:
                if session is None:
                    session = store.start_session(**session_info)
                store.add(session, [s])
            render_reveal(screen, s, explain(r.solution))
    except EOFError:
        screen.print()
        screen.print(f"Session ended after {len(scored)} rounds.")
    except KeyboardInterrupt:
        screen.print()
        screen.print(f"Session ended after {len(scored)} rounds.")
        raise KeyboardInterrupt(scored, session) from None
    return scored, session


def _play_scripted(source, given, where, probs, *, as_json, save, replay) -> None:
    """Answer every round from the given answers; the JSON schema of the issue."""
    from derisk.quiz import QuizStore, parse_answer, score

    scored = []
    probs = list(probs)
    with progress("{task.completed}/{task.total} rounds") as bar:
        task = bar.add_task("quiz", total=len(given))
        for r, text in zip(source, given, strict=False):
            move = parse_answer(r, text)
            stated = probs.pop(0) if (r.calibration and probs) else None
            scored.append(score(r, move, stated_p=stated))
            bar.advance(task)
    if len(scored) < len(given):
        raise DeriskError(
            f"{where} gives {len(given)} answers but the optimal policy reaches only "
            f"{len(scored)} decisions; give {len(scored)}"
        )
    if probs:
        asked = sum(s.stated_p is not None for s in scored)
        raise DeriskError(
            f"--probabilities gives {asked + len(probs)} answers for {asked} calibration "
            "questions (rounds 2, 5, 8, ...); give one per calibration round"
        )
    saved = None
    if save is not None:
        db_path, level, seed, src = save
        with QuizStore(db_path) as store:
            session = store.start_session(mode="scripted", level=level, seed=seed, source=src)
            store.add(session, scored)
        saved = db_path
    if as_json:
        emit({"rounds": [s.as_dict() for s in scored]})
        return
    from derisk.planner import explain

    for s in scored:
        render_round(out, s.round, len(scored))
        out.print(f"answer: {escape(s.answer)}")
        render_reveal(out, s, explain(s.round.solution))
    render_summary(out, scored, saved, replay)


COMMANDS = [("quiz", quiz)]
