"""The ``duetrl`` command: parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from duetrl.errors import TrainingError, UserError, command_line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "env_id",
        nargs="?",
        help="Gymnasium env id, e.g. Pendulum-v1, or module:Class (needed unless --config or --resume gives it)",
    )
    p.add_argument("--algo", help="algorithm: ac, a2c, ppo, ... (default ac)")
    p.add_argument("--preset", help="named preset (see `duetrl presets`); default: the env/algo's own")
    p.add_argument("--config", help="YAML file of settings (layered over the preset)")
    p.add_argument(
        "--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="any setting"
    )
    p.add_argument("--steps", type=float, help="total env steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-envs", type=int)
    p.add_argument("--env-kwargs", nargs="+", default=[], metavar="K=V", help="env constructor args, e.g. g=0")
    p.add_argument("--backend", choices=["auto", "gymnasium", "torch"])
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--run-dir", help="where metrics, config and checkpoints go")
    p.add_argument(
        "--import",
        dest="imports",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="modules to import first (they may register envs)",
    )
    p.add_argument(
        "--wrap",
        dest="wrappers",
        action="append",
        default=[],
        metavar="MODULE:WRAPPER",
        help="a Gymnasium wrapper around every env, at training and evaluation (repeatable, applied in order)",
    )
    p.add_argument("--target-return", type=float, help="stop when the periodic eval mean reaches this")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline without a key)")
    p.add_argument("--save-buffer", action="store_true", help="off-policy: keep the replay buffer in checkpoints")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="duetrl", description="Actor-critic reinforcement learning on Gymnasium environments.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train an agent")
    _train_args(train)
    train.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="train these seeds as ONE population in one process (each writes RUN_DIR/seed_<s>/); with --set "
        "key=v1,v2 grids of numeric settings, the grid times the seeds",
    )
    train.set_defaults(usage=train.format_usage)

    ev = sub.add_parser("eval", help="evaluate a trained run")
    ev.add_argument(
        "run_dir", metavar="RUN", help="a run directory, one of its checkpoint files, or an exported .onnx/.pt2 policy"
    )
    ev.add_argument("--env", help="evaluate on this env instead of the run's own (an id or module:Class)")
    ev.add_argument("--episodes", type=int, default=10)
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", action="store_true", default=None, help="act with the policy's mode")
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")
    ev.add_argument("--checkpoint", default="latest", help="latest, best, or a checkpoint file")
    ev.add_argument("--env-kwargs", nargs="+", default=None, metavar="K=V", help="override env args")
    ev.add_argument("--seed", type=int, default=None, help="first episode seed (default: held-out seeds)")
    ev.add_argument("--render", choices=["human"], help="show the episodes in a window")
    ev.add_argument("--video", help="record the episodes to FILE.mp4 or FILE.gif")
    ev.add_argument("--json", action="store_true", help="print one JSON object")

    ex = sub.add_parser("export", help="write a run's policy as one deterministic ONNX or pt2 file")
    ex.add_argument("run_dir", metavar="RUN", help="a run directory, or one of its checkpoint files")
    ex.add_argument("-o", "--output", help="the policy file (default: RUN/policy.onnx, or .pt2)")
    ex.add_argument("--format", choices=["onnx", "pt2"], help="default: from --output's suffix, else onnx")
    ex.add_argument("--checkpoint", default="last", help="last (default), best, or a checkpoint file")

    sw = sub.add_parser("sweep", help="multi-seed runs and hyperparameter sweeps on Ray Tune")
    _train_args(sw)
    sw.set_defaults(usage=sw.format_usage)
    sw.add_argument("--seeds", nargs="+", type=int, default=[0])
    sw.add_argument("--search", choices=["grid", "random"], default="grid")
    sw.add_argument("--samples", type=int, default=1, help="configurations drawn with --search random")
    sw.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    sw.add_argument("--cpus-per-trial", type=float, default=1.0)
    sw.add_argument(
        "--vectorize",
        action="store_true",
        help="train the trials that differ only in per-member settings (seeds, lr, gamma, ...) as one population "
        "each, one Ray trial per population",
    )

    pl = sub.add_parser("plot", help="learning curves of runs and sweeps")
    pl.add_argument("paths", nargs="+", metavar="RUN_DIR")
    pl.add_argument("-o", "--output", help=".png, .svg or .pdf (default: curves.png in the first RUN_DIR)")
    pl.add_argument("--x", default="env_steps", choices=["env_steps", "wall_time_s"])
    pl.add_argument(
        "--y",
        default="eval_return_mean",
        help="the metric: eval_return_mean (default), episode_return (training), or any metrics.csv column, e.g. "
        "critic_loss",
    )
    pl.add_argument("--band", default="minmax", choices=["minmax", "ci95"], help="across seeds: min-max or 95%% CI")
    pl.add_argument("--title")

    bench = sub.add_parser("bench", help="the standard benchmark, side by side with Stable-Baselines3 if installed")
    bench.add_argument(
        "--tasks",
        nargs="+",
        default=["ppo", "sac"],
        help="Pendulum-v1: ppo, a2c, ac, sac, td3, ddpg; MuJoCo: ppo-halfcheetah, sac-halfcheetah; defaults: "
        "the family of untuned duetrl (--preset none) against SB3's library defaults on envs with no preset",
    )
    bench.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="seeds, each a fresh process (default: 0-9, ten seeds, for the summary's fraction reaching the "
        "threshold, median and IQM with 95%% bootstrap intervals, and worst seed; 0 1 2 for defaults)",
    )
    bench.add_argument("--defaults-envs", nargs="+", metavar="ENV", help="defaults family: only these envs")
    bench.add_argument(
        "--defaults-algos", nargs="+", metavar="ALGO", help="defaults family: only these of ppo, a2c, sac, td3"
    )
    bench.add_argument(
        "--budget-scale", type=float, default=1.0, help="defaults family: every budget times this, for a quick look"
    )
    bench.add_argument("--no-sb3", action="store_true", help="duetrl figures only")
    bench.add_argument("--listing", help="path to the chapter's listing, to compare --preset chapter's speed")
    bench.add_argument("--json", help="also write the results to this JSON file")

    sub.add_parser("presets", help="list shipped presets")
    params = sub.add_parser("params", help="list an algorithm's settings and defaults")
    params.add_argument("--algo", default="ac")
    # --debug also after the subcommand; SUPPRESS, as a subparser's default would overwrite a leading --debug
    for subparser in sub.choices.values():
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from duetrl.config import parse_assignments

    values = parse_assignments(args.sets)
    if args.env_kwargs:
        values["env_kwargs"] = parse_assignments(args.env_kwargs, "--env-kwargs")
    for flag in ("steps", "seed", "num_envs", "backend", "device", "target_return"):
        value = getattr(args, flag)
        if value is not None:
            values[flag] = value
    if args.imports:
        values["imports"] = args.imports
    if args.wrappers:
        values["wrappers"] = args.wrappers
    if args.wandb:
        values["wandb"] = True
    if args.save_buffer:
        values["save_buffer"] = True
    return values


def cmd_train(args: argparse.Namespace) -> int:
    import duetrl
    from duetrl.api import names_an_env, resolve

    if args.resume:
        from duetrl.config import load_yaml_file

        # Every setting given beside --resume is checked: the resumable ones apply, any other is refused.
        changes = {**(load_yaml_file(args.config) if args.config else {}), **_overrides(args)}
        for key, value in (("env_id", args.env_id), ("algo", args.algo), ("preset", args.preset)):
            if value is not None:
                changes[key] = value
        if (Path(args.resume) / "population.json").exists():
            from duetrl.api import resume_population

            return _population_report(resume_population(args.resume, quiet=args.quiet, **changes))
        result = duetrl.resume(args.resume, quiet=args.quiet, **changes)
    elif args.seeds is not None or _train_grid(args):
        return _train_population(args)
    else:
        overrides = _overrides(args)
        if args.env_id is None and not names_an_env(args.config, overrides):
            print(args.usage(), end="", file=sys.stderr)
            raise UserError("train needs an environment: duetrl train ENV_ID, e.g. duetrl train Pendulum-v1 --algo ppo")
        cfg, _ = resolve(args.env_id, args.algo, args.preset, args.config, overrides)
        result = duetrl.train(config=cfg, run_dir=args.run_dir, quiet=args.quiet)
    summary = {
        "run_dir": str(result.run_dir),
        "env_steps": result.env_steps,
        "wall_time_s": round(result.wall_time_s, 2),
    }
    if result.stopped_early:
        summary["stopped"] = result.stopped_early
    if result.final_eval is not None:
        summary.update({k: v for k, v in result.final_eval.to_dict().items() if v is not None})
    print(json.dumps(summary))
    return 130 if result.stopped_early == "interrupted" else 0


def _train_grid(args: argparse.Namespace) -> dict[str, list]:
    """The ``--set key=v1,v2`` settings of a train command that list several values (a population's grid)."""
    grid = {}
    for key, value in _overrides(args).items():
        values = _grid_values(key, value)
        if values is not None:
            grid[key] = values
    return grid


def _train_population(args: argparse.Namespace) -> int:
    """``duetrl train ENV --seeds ...`` (and/or a ``--set`` grid): one population in one process."""
    from duetrl.api import names_an_env, train_population

    overrides = _overrides(args)
    if args.env_id is None and not names_an_env(args.config, overrides):
        print(args.usage(), end="", file=sys.stderr)
        raise UserError("train needs an environment: duetrl train ENV_ID --seeds 0 1 2 --run-dir DIR")
    if args.seeds is not None and args.seed is not None:
        raise UserError("--seeds and --seed together: give --seeds for a population or --seed for one run")
    if not args.run_dir:
        raise UserError("a population (--seeds or a --set grid) needs --run-dir DIR: each member writes DIR/seed_<s>/")
    grid = _train_grid(args)
    for key in grid:
        del overrides[key]
    seeds = args.seeds if args.seeds is not None else [overrides.pop("seed", 0)]
    result = train_population(
        args.env_id,
        args.algo,
        seeds=seeds,
        grid=grid,
        preset=args.preset,
        config=args.config,
        run_dir=args.run_dir,
        quiet=args.quiet,
        **overrides,
    )
    return _population_report(result)


def _population_report(result: Any) -> int:
    """A population's summary: one JSON object on stdout, one line per setting on stderr."""
    from duetrl.population import format_members_summary

    print(format_members_summary(result.summary), file=sys.stderr)
    summary = {
        "run_dir": str(result.run_dir),
        "members": len(result.members),
        "env_steps": result.env_steps,
        "wall_time_s": round(result.wall_time_s, 2),
        "summary": result.summary,
    }
    if result.interrupted:
        summary["stopped"] = "interrupted"
    print(json.dumps(summary))
    return (
        130
        if result.interrupted
        else 1
        if any(r["stopped"] and r["stopped"].startswith("failed") for r in result.members)
        else 0
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import duetrl
    from duetrl.config import parse_assignments
    from duetrl.evaluate import EVAL_SEED_BASE

    exported = args.run_dir.lower().endswith((".onnx", ".pt2"))
    if exported:
        if args.checkpoint != "latest":
            raise UserError(f"--checkpoint applies to a run directory; {args.run_dir} is an exported policy")
        agent, env_id, source = args.run_dir, args.env, args.run_dir
    else:
        agent = duetrl.load(args.run_dir, checkpoint=args.checkpoint)
        env_id, source = args.env or agent.env_id, agent.checkpoint
    env_kwargs = parse_assignments(args.env_kwargs, "--env-kwargs") if args.env_kwargs else None
    result = duetrl.evaluate(
        agent,
        episodes=args.episodes,
        deterministic=args.deterministic,
        seed=EVAL_SEED_BASE if args.seed is None else args.seed,
        env_kwargs=env_kwargs,
        render=args.render,
        video=args.video,
        env=args.env,
    )
    if exported and env_id is None:
        from duetrl.deploy import ExportedPolicy

        env_id = ExportedPolicy.env_of(args.run_dir)
    out = result.to_dict()
    if args.json:
        print(json.dumps({**out, "returns": result.returns}))
    else:
        print(
            f"{env_id}: mean return {out['mean_return']:.1f} +/- {out['std_return']:.1f} "
            f"(median {out['median_return']:.1f}) over {out['episodes']} episodes, {result.mode} actions "
            f"({source})"
        )
        if args.video:
            print(f"video written to {args.video}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import duetrl

    result = duetrl.export(args.run_dir, args.output, args.format, args.checkpoint)
    print(json.dumps(result.to_dict()))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from duetrl.sweeps import format_summary, resume_sweep, sweep

    if args.resume:
        rows = resume_sweep(args.resume, address=args.address)
    else:
        if not args.run_dir:
            raise UserError("duetrl sweep needs --run-dir DIR (where trials and the summary go)")
        overrides = _overrides(args)
        from duetrl.api import names_an_env

        if args.env_id is None and not names_an_env(args.config, overrides):
            print(args.usage(), end="", file=sys.stderr)
            raise UserError("sweep needs an environment: duetrl sweep ENV_ID --run-dir DIR ...")
        grid = {}
        for key, value in list(overrides.items()):
            values = _grid_values(key, value)
            if values is not None:
                grid[key] = values
                del overrides[key]
        overrides.pop("seed", None)
        target = overrides.pop("target_return", None)
        rows = sweep(
            args.run_dir,
            args.env_id,
            args.algo,
            seeds=args.seeds,
            grid=grid,
            search=args.search,
            samples=args.samples,
            preset=args.preset,
            config=args.config,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            target_return=target,
            vectorize=args.vectorize,
            **overrides,
        )
    print(format_summary(rows))
    return 0


def _top_level_split(text: str) -> list[str]:
    """``"[64,64],[256,256]"`` -> ``["[64,64]", "[256,256]"]``: commas outside brackets only."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _grid_values(key: str, value: object) -> list | None:
    """The values a sweep's ``--set key=v1,v2`` tries, or None if it is a single value. A list setting's values are
    bracketed (``hidden=[64,64],[256,256]``); without brackets, ``hidden=64,64`` is one list."""
    from duetrl.algos import ALGOS
    from duetrl.config import RunConfig, parse_value

    if not isinstance(value, str) or key == "env_kwargs":
        return None
    parts = _top_level_split(value)
    if len(parts) < 2:
        return None
    list_keys = {
        f.name
        for cls in (RunConfig, *(spec.config_cls for spec in ALGOS.values()))
        for f in dataclasses.fields(cls)
        if "list" in str(f.type)
    }
    if key in list_keys and not all(p.strip().startswith("[") for p in parts):
        return None
    return [parse_value(p.strip()) for p in parts]


def cmd_plot(args: argparse.Namespace) -> int:
    from duetrl.curves import plot

    print(plot(args.paths, args.output, x=args.x, title=args.title, y=args.y, band=args.band))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from duetrl.bench import DEFAULTS_SEEDS, bench, bench_defaults, defaults_tasks

    listing = Path(args.listing) if args.listing else None
    if listing is not None and not listing.is_file():
        raise UserError(f"--listing {listing}: no such file")
    tasks = [t for t in args.tasks if t != "defaults"]
    defaults = "defaults" in args.tasks
    if defaults:  # fail on a bad name now, not after the other tasks' runs
        if args.no_sb3:
            raise UserError("--tasks defaults compares against SB3: it cannot run with --no-sb3")
        defaults_tasks(args.defaults_envs, args.defaults_algos, args.budget_scale)
    results: dict[str, Any] = {}
    if tasks:
        results = bench(tasks, args.seeds or list(range(10)), with_sb3=not args.no_sb3, listing=listing)
    if defaults:
        seeds = args.seeds or DEFAULTS_SEEDS
        results["defaults"] = bench_defaults(args.defaults_envs, args.defaults_algos, seeds, args.budget_scale)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from duetrl.config import list_presets

    rows = list_presets()
    width = max(len(f"{r['env']} / {r['algo']} / {r['name']}") for r in rows)
    for r in rows:
        name = f"{r['env']} / {r['algo']} / {r['name']}"
        print(f"{name:<{width}}  {r['description']}")
    print(
        "\n`duetrl train ENV --algo ALGO` uses ENV / ALGO / default when it exists; any / ALGO / NAME fit "
        "every env (--preset NAME)."
    )
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from duetrl.algos import get_algo
    from duetrl.config import RunConfig
    from duetrl.params import rows

    spec = get_algo(args.algo.lower())
    shown = {"algo": repr(spec.name), "env_id": "(required)"}  # the run settings as this algorithm's run has them
    for title, cls in (("run settings", RunConfig), (f"{spec.name} settings: {spec.description}", spec.config_cls)):
        print(f"# {title}")
        for name, kind, default, text in rows(cls):
            value = shown.get(name, repr(default)) if cls is RunConfig else repr(default)
            print(f"{name:<22} {kind:<12} {value:<13} {text}")
    return 0


COMMANDS = {
    "sweep": cmd_sweep,
    "plot": cmd_plot,
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "bench": cmd_bench,
    "presets": cmd_presets,
    "params": cmd_params,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        with command_line():  # messages name settings as flags
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"duetrl: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        if debug:
            traceback.print_exc()
        print(f"duetrl: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("duetrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `duetrl params | head`: the reader has gone, and so may we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
