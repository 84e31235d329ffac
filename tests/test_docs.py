"""The docs stay true: the site builds with ``mkdocs build --strict``, and every command and Python snippet in the
README and docs/ runs, in order, page by page, at a reduced step count.

A fenced ``bash`` or ``python`` block runs unless the line before it is ``<!-- docs-test: skip (why) -->``; the
list of such blocks is short and each says why (installing, hours of benchmarks, a script shown in full that
another test runs). In a bash block each line is one command: ``duetrl ...`` runs in this process, ``python ...``
in a child. To take seconds rather than minutes, step counts above ``MAX_STEPS`` (``MAX_OFF_POLICY_STEPS`` for
sac, td3 and ddpg, ``MAX_PIXEL_STEPS`` for Atari) are cut to it (``--steps N``, ``steps=N``), a ``duetrl train`` or
``duetrl sweep`` without ``--steps`` gets it (a sweep's trials otherwise run the preset's full length), their
evaluations play ``EVAL_EPISODES`` episodes cut at ``EVAL_MAX_STEPS`` steps where the env has no time limit of its
own (an untrained Breakout agent that never fires would play 10,000), and a sweep runs its first two seeds; the
rest runs as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MAX_STEPS = 4096
MAX_OFF_POLICY_STEPS = 1000  # a gradient step per env step: fewer (not below the Pendulum presets' warm-up of 500)
MAX_PIXEL_STEPS = 1024  # an Atari step is a Nature-CNN pass: still a whole rollout of the Pong preset (8 x 128)
EVAL_EPISODES = 2  # per evaluation of a duetrl train command (duetrl eval runs as written)
EVAL_MAX_STEPS = 500  # their step cap on an env without a time limit (Atari's): eval_max_steps
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- docs-test: skip \((.+)\) -->\s*$")


def blocks(page: Path) -> list[tuple[str, str, int, str | None]]:
    """(language, code, line number, reason to skip or None) of each fenced bash or python block of a page."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        language = match.group(1)
        if language not in ("bash", "python"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        found.append((language, match.group(2), text.count("\n", 0, match.start()) + 1, skip and skip.group(1)))
    return found


def reduced(text: str) -> str:
    """Step counts above MAX_STEPS cut to it, in a command line or in Python keyword arguments."""

    def cut(match: re.Match) -> str:
        steps = int(float(match.group(2).replace("_", "")))
        return f"{match.group(1)}{min(steps, MAX_STEPS)}"

    return re.sub(r"(--steps |\bsteps=)([\d_.e]+)", cut, text)


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: one a line (backslash continuations joined), comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def run_command(argv: list[str], capsys: pytest.CaptureFixture, where: str) -> None:
    if argv[0] == "duetrl":
        if argv[1] in ("train", "sweep") and "--resume" not in argv:
            off_policy = any(a in argv for a in ("sac", "td3", "ddpg"))  # a gradient step per env step: fewer
            pixels = any(a.startswith("ALE/") for a in argv)
            cap = MAX_PIXEL_STEPS if pixels else MAX_OFF_POLICY_STEPS if off_policy else MAX_STEPS
            if "--steps" in argv:
                at = argv.index("--steps") + 1
                argv[at] = str(min(int(float(argv[at])), cap))
            else:
                argv = [*argv, "--steps", str(cap)]
            argv = [*argv, "--set", f"eval_episodes={EVAL_EPISODES}", f"eval_max_steps={EVAL_MAX_STEPS}"]
        if argv[1] == "sweep" and "--seeds" in argv:  # two seeds show a band; Ray's start-up is the rest
            at = argv.index("--seeds") + 1
            end = next((i for i in range(at, len(argv)) if argv[i].startswith("-")), len(argv))
            argv = [*argv[:at], *argv[at:end][:2], *argv[end:]]
        code, out, err = run(capsys, *argv[1:])
        assert code == 0, f"{where}: `{shlex.join(argv)}` exited {code}: {err.strip()[-2000:]}"
    elif argv[0] == "python":
        args = [str(ROOT / a) if not Path(a).exists() and (ROOT / a).exists() else a for a in argv[1:]]
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{where}: `{shlex.join(argv)}`: {done.stderr.strip()[-2000:]}"
    else:
        raise AssertionError(f"{where}: `{shlex.join(argv)}`: only duetrl and python commands run in the docs test")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_snippet_of_the_page_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))  # modules a page writes (my_envs.py) import as from a user's directory
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = set(sys.modules)
    ran = 0
    try:
        for language, code, line, skip in blocks(page):
            if skip:
                continue
            where = f"{page.relative_to(ROOT)}:{line}"
            if language == "bash":
                for argv in commands(reduced(code)):
                    run_command(argv, capsys, where)
            else:
                exec(compile(reduced(code), where, "exec"), {"__name__": "__docs__"})  # noqa: S102
            ran += 1
    finally:
        for name in set(sys.modules) - before:  # my_envs of one page is not another page's
            if name.startswith("my_"):
                del sys.modules[name]
    if not blocks(page):
        pytest.skip("no code on this page")
    assert ran or all(skip for *_, skip in blocks(page))


def test_the_skipped_blocks_are_few_and_say_why():
    skipped = [(page.name, line, why) for page in PAGES for _, _, line, why in blocks(page) if why]
    assert len(skipped) <= 6, skipped  # setup and install (2), benchmarks (2), the tutorial script, a listing
    assert all(len(why) > 10 for *_, why in skipped)


def test_step_counts_are_reduced_and_others_kept():
    assert reduced("duetrl train X --steps 200000 --seed 3") == f"duetrl train X --steps {MAX_STEPS} --seed 3"
    assert reduced("train(steps=200_000, eval_every=5_000)") == f"train(steps={MAX_STEPS}, eval_every=5_000)"
    assert reduced("--steps 1000") == "--steps 1000"
    assert commands("duetrl a \\\n  b  # note\n\nduetrl c") == [["duetrl", "a", "b"], ["duetrl", "c"]]


def test_the_site_builds_strictly(tmp_path):
    """mkdocs build --strict: every page in the nav, every link and every API reference resolves, and the generated
    pages (configuration reference, settings, presets) build from the code as it is now."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "bootstrap_truncation" in reference and "target_entropy_final" in reference
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("duetrl.api.train") >= 1
