"""``python -m core <stage>``: every pipeline stage from the command line, flags built from its config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from core.config import validate
from core.errors import UserError
from core.stages import STAGES


def add_config_flags(parser: argparse.ArgumentParser, cls: type, defaults: bool = True) -> None:
    """One flag per dataclass field: ``--field-name``, typed, with its help, default and choices
    (``defaults=False``: a flag not given is left out of the parsed arguments)."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        help_text = f"{meta.get('help', '')} (default: {f.default})"
        default = f.default if defaults else argparse.SUPPRESS
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type), type(f.default))
        parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=meta.get("choices"),
                            help=help_text, metavar=None if meta.get("choices") else kind.__name__.upper())


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="World Models for CarRacing-v3: "
                                     "collect -> train-vae -> train-rnn -> evolve -> evaluate -> record.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.description, description=stage.description)
        add_config_flags(p, stage.config, defaults)
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "evolve":
            p.add_argument("--trust-pickle", action="store_true", help="convert the pickled checkpoint of an earlier "
                           "version (controller/cma_state.pkl) to cma_state.npz first; unpickling runs any code "
                           "in the file, so only for a run folder of your own")
    return parser


def stage_values(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any], list[str]]:
    """The parsed arguments, the stage config's values, and the settings a resumed evolution kept from its
    saved config (those not given on the command line; abbreviated flags count as given)."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in dataclasses.fields(STAGES[args.stage].config)}
    kept: list[str] = []
    if args.stage == "evolve":
        from core.pipeline.evolve import saved_settings
        given = vars(build_parser(defaults=False).parse_args(argv))
        for name, value in saved_settings(values["run_dir"]).items():
            if name not in given and value != values[name]:
                values[name] = value
                flag = name.replace("_", "-")
                kept.append((f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool)
                            else f"--{flag} {shlex.quote(str(value))}")
    return args, values, kept


def _convert_trusted_pickle(argv: Sequence[str] | None) -> None:
    """``evolve --trust-pickle``: convert the run's pickled checkpoint before its saved settings are read."""
    args = build_parser().parse_args(argv)
    if args.stage == "evolve" and args.trust_pickle:
        from core.pipeline.evolve import convert_pickled_checkpoint
        if convert_pickled_checkpoint(args.run_dir):
            print(f"converted {Path(args.run_dir) / 'controller' / 'cma_state.pkl'} to cma_state.npz "
                  "(the pickle is gone)", file=sys.stderr)


def _summary(stage: str, result: dict) -> str:
    if stage == "evaluate":
        ended = "; ".join(f"{e['ended']} {e['episodes']}" for e in result.get("endings", []))
        return (f"evaluate: {result['mean']:.1f} ± {result['std']:.1f} over {result['episodes']} episodes "
                f"(min {result['min']:.1f}, max {result['max']:.1f}{'; ' + ended if ended else ''}) -> {result['out']}")
    if stage == "compare":
        return compare_summary(result)
    if stage == "snapshot":
        run, file = shlex.quote(result["run_dir"]), shlex.quote(result["file"])
        report = shlex.quote(str(Path(result["file"]).with_suffix(".evaluation.json")))
        return (f"snapshot: the {result['holds']} of generation {result['generation']} -> {result['file']}\n"
                f"  evaluate it: python -m core evaluate --model-dir {run} --params {file}\n"
                f"  ship it:     python -m core export --run-dir {run} --params {file} --evaluation {report}")
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
    return f"{stage}: " + json.dumps(shown, default=str)


def compare_summary(result: dict) -> str:
    """A comparison in words: the means, the lead with its 95% interval, the tracks won, the verdict."""
    from core.storage.reports import verdict_words
    lines = [f"compare: {result['tracks']} tracks in common (seeds {result['first_seed']}..{result['last_seed']})",
             f"  baseline   {result['baseline_mean']:7.1f}  {result['baseline']}",
             f"  challenger {result['challenger_mean']:7.1f}  {result['challenger']}"]
    if result["ci95"] is None:
        lines.append(f"  lead {result['lead']:+.1f} on one track, won {result['wins']}, lost {result['losses']}")
    else:
        low, high = result["ci95"]
        lines.append(f"  lead {result['lead']:+.1f} ± {result['lead_se']:.1f} (standard error; 95% interval "
                     f"{low:+.1f} to {high:+.1f}), won {result['wins']}, lost {result['losses']}, tied "
                     f"{result['ties']}")
    lines.append(f"  verdict: {verdict_words(result)}")
    if result["same_controller"]:
        lines.append("  note: both reports are of the same controller")
    if not result["complete"]:
        lines.append("  note: a report is of a stopped evaluation (complete: false); run it again to finish it")
    if result["only_baseline"] or result["only_challenger"]:
        lines.append(f"  note: {result['only_baseline']} baseline and {result['only_challenger']} challenger "
                     "tracks were left out (driven by one only)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from core.progress import TerminalProgress

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        _convert_trusted_pickle(argv)
        args, values, kept = stage_values(argv)
        config = validate(STAGES[args.stage].config(**values))
    except (UserError, TypeError) as e:  # TypeError: a saved setting of the wrong kind
        print(f"error: {e}", file=sys.stderr)
        return 2
    if kept:
        print(f"resuming {config.run_dir} with its saved settings: {', '.join(kept)} (a flag given changes one)",
              file=sys.stderr)
    instant = ("compare", "snapshot")  # no progress bar for these
    bar = None if args.quiet or args.stage in instant else TerminalProgress(args.stage)
    stop = _install_stop_handlers()

    def progress(step: int, total: int, metrics) -> bool:
        if bar is not None:
            bar(step, total, metrics)
        return not stop.is_set()

    try:
        result = STAGES[args.stage].prepare(config)(config, progress)
    except (KeyboardInterrupt, InterruptedError):  # InterruptedError: stopped where no checkpoint is written
        if args.stage == "record":
            print("\nstopped; no video was written (--out is as it was): a recording starts over when run "
                  "again", file=sys.stderr)
        else:
            print("\nstopped; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except (UserError, OSError) as e:  # OSError: an unwritable --out, a full disk, ...
        if bar is not None:
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    if stop.is_set() and args.stage != "record":  # a recording that still finished has nothing to resume
        print("stopped cleanly after a checkpoint; run the same command again to resume", file=sys.stderr)
    print(_summary(args.stage, result))
    return 0


def _install_stop_handlers() -> threading.Event:
    """First Ctrl-C or SIGTERM: ask the stage to stop at its next checkpoint. Second Ctrl-C: stop now."""
    stop = threading.Event()

    def handle(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(f"\n{signal.Signals(signum).name}: stopping after the current step (Ctrl-C again to stop now)",
              file=sys.stderr)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop
