r"""``nflows-edu``: train, sample and check flows from the command line.

::

    nflows-edu demo  [--data checkerboard] [--steps 3000] [--out demo_out] [--seed 0]
    nflows-edu train --model realnvp --data moons --steps 3000 --out runs/moons
    nflows-edu sample --model runs/moons/model.npz -n 1000 --out samples.csv
    nflows-edu check [--layer AffineCoupling] [--draws 20] [--module my_layer.py]
    nflows-edu table [--fast] [--dims 16,64] [-n 1024] [--repeats 5]
    nflows-edu assignment list
    nflows-edu assignment make AffineCoupling.backward Linear.backward --out hw1
    nflows-edu assignment grade hw1 [--timeout 60] [--draws 2] [--seed 7] [--results F]

``main(argv)`` returns the exit code: 0 on success, 1 if ``check`` finds a failing layer, 2 for
a mistake the user can fix (bad arguments, a missing or corrupt model file, a training run
whose loss became NaN). Those are reported as one line ``nflows-edu: error: ...`` on stderr,
without a traceback; anything else is a bug and keeps its traceback.
"""
import argparse
import math
import os
import sys

import matplotlib
import numpy as np

from . import __version__, datasets, gradcheck, io, models, recipes, train
# the runs are recipes (recipes.py); the CLI parses its arguments into a recipes.Run. The names
# below stay importable from here: benchmarks and notebooks use cli.run_training, cli.LR, ...
from .recipes import (BETA2, CLIP, CONTINUOUS, DEMO_LR, DEMO_STEPS,  # noqa: F401
                      DIGITS_ACTIVATION, DIGITS_COPIES, DIGITS_EVAL_EVERY, DIGITS_HIDDEN,
                      DIGITS_LR, DIGITS_MODELS, DIGITS_TEMPERATURES, DIGITS_TEST_COPIES, HIDDEN,
                      LR, N_TEST, N_TEST_CONTINUOUS, N_TEST_DEMO, N_TEST_FAST, N_TRAIN,
                      TOY_DEFAULTS, WARMUP, UsageError, n_test, run_digits, run_training)

PROG = "nflows-edu"
# Errors a user can cause (bad arguments and model files become UsageError on the way).
# Anything else is a bug in the library and should keep its traceback.
USER_ERRORS = (UsageError, OSError, train.NonFiniteLossError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises ``UsageError`` instead of exiting, so ``main`` can
    report it in the same one-line format as every other error."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------ argument types
def _number(text, cast, ok, expected):
    """``cast(text)`` if it parses and ``ok`` holds for it, else an argparse error."""
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text):
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text):
    return _number(text, float, lambda v: math.isfinite(v) and v > 0,
                   "a positive finite number")


def unit_interval(text):
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def open_unit_interval(text):
    return _number(text, float, lambda v: 0 < v < 1, "a number in (0, 1)")


def seed_int(text):
    return _number(text, int, lambda v: v >= 0, "a non-negative integer seed")


def non_negative_int(text):
    return _number(text, int, lambda v: v >= 0, "a non-negative integer")


def threads_arg(text):
    if text == "auto":
        return text
    return _number(text, int, lambda v: v >= 1, "'auto' or a positive number of threads")


def hidden_sizes(text):
    """'64,64' -> (64, 64)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer widths such as 64,64, got {text!r}")
    return sizes


def build_parser():
    parser = _Parser(prog=PROG, description="Normalizing flows in NumPy, for teaching.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fast = os.environ.get("NFLOWS_EDU_FAST") == "1"
    names = ", ".join(datasets.TOY_NAMES)
    demo = sub.add_parser("demo", help="train RealNVP on a 2-D toy density and draw pictures",
                          description=f"Train models.realnvp(2) (Adam, batch 512, lr "
                          f"{DEMO_LR:g}, 200 warm-up steps, cosine decay) on 100,000 points of a "
                          "toy density, report the test NLL (and KL where the true density is "
                          f"known, on {N_TEST_DEMO:,} fresh points), and write pictures and the "
                          "model into --out (overwriting).")
    demo.add_argument("--data", default="checkerboard", choices=datasets.TOY_NAMES,
                      metavar="NAME", help=f"toy density (default checkerboard): {names}")
    demo.add_argument("--steps", type=positive_int, default=200 if fast else DEMO_STEPS,
                      help=f"training steps (default {DEMO_STEPS}; 200 if NFLOWS_EDU_FAST=1)")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--seed", type=seed_int, default=0)
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                      help="float32 (default: twice as fast, the same fit) or float64")
    demo.add_argument("--threads", type=threads_arg, default="auto",
                      help="BLAS threads: 'auto' (default: one for small matrices) or a number")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    tr = sub.add_parser("train", help="train a flow on a 2-D toy density and save it",
                        description="Train a flow by maximum likelihood on 100,000 points of "
                        "a toy density; write DIR/model.npz, DIR/metrics.json and pictures.")
    tr.add_argument("--model", required=True, choices=sorted(models.MODELS))
    tr.add_argument("--data", required=True, choices=datasets.TOY_NAMES + ("digits",),
                    metavar="NAME", help=f"toy density: {names}; or digits (8x8 images, "
                    "see run_digits)")
    tr.add_argument("--steps", type=positive_int, default=5000, help="default 5000")
    tr.add_argument("--batch-size", type=positive_int, default=512, help="default 512")
    tr.add_argument("--lr", type=positive_float, default=None,
                    help=f"peak Adam learning rate (default {LR:g}; {DIGITS_LR:g} for digits)")
    tr.add_argument("--warmup", type=non_negative_int, default=WARMUP,
                    help=f"linear warm-up steps before the cosine decay (default {WARMUP})")
    tr.add_argument("--out", required=True, metavar="DIR")
    tr.add_argument("--seed", type=seed_int, default=0)
    tr.add_argument("--n-layers", type=positive_int, default=None,
                    help="coupling or autoregressive layers (default: the model's own, 4 for "
                         "nice, 8 for realnvp and nsf, 5 for maf and nsf_ar)")
    tr.add_argument("--hidden", type=hidden_sizes, default=None,
                    help="hidden layer widths of each network: coupling nets, MADEs, residual "
                    "blocks (default 64,64; 64,64,64 for maf)")
    tr.add_argument("--coupling", choices=("affine", "spline"), default=None,
                    help="glow's coupling layers: affine (GlowCoupling, the default) or spline "
                    "(ImageSplineCoupling, 8 bins on [-4, 4]); glow on digits only")
    tr.add_argument("--beta2", type=unit_interval, default=None,
                    help=f"Adam's decay rate of the squared gradient's running mean (default "
                    f"{BETA2:g}; 0.99 for maf)")
    tr.add_argument("--ema", type=open_unit_interval, default=None, metavar="DECAY",
                    help="Polyak averaging: validate, keep and test the running average of the "
                    "parameters with this decay (e.g. 0.999; default: none; not for "
                    "flow_matching)")
    tr.add_argument("--dtype", choices=("float64", "float32"), default=None,
                    help="default float64; float32 for flow_matching on the toys")
    tr.add_argument("--clip", type=positive_float, default=CLIP,
                    help=f"clip the gradient norm to this (default {CLIP:g})")
    tr.add_argument("--threads", type=threads_arg, default="auto",
                    help="BLAS threads: 'auto' (default: one for small matrices) or a number")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing DIR/model.npz")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sa = sub.add_parser("sample", help="draw samples from a saved flow",
                        description="Load a model saved by 'train' or 'demo' and draw samples; "
                        "write them to FILE (.npy or .csv) or print CSV to stdout.")
    sa.add_argument("--model", required=True, metavar="PATH")
    sa.add_argument("-n", type=positive_int, required=True, help="number of samples")
    sa.add_argument("--seed", type=seed_int, default=None)
    sa.add_argument("--temperature", type=positive_float, default=1.0,
                    help="scale the base noise by T (default 1; Glow samples at 0.5-0.75)")
    sa.add_argument("--out", default=None, metavar="FILE")

    ch = sub.add_parser("check", help="finite-difference checks of every registered layer",
                        description="Round trip, log-determinant and both VJPs of every layer "
                        "in the gradcheck registry, against central differences; exit 1 if any "
                        "fails.")
    ch.add_argument("--seed", type=seed_int, default=0)
    ch.add_argument("--draws", type=positive_int, default=1,
                    help="random layers (sizes, parameters) per registered name (default 1)")
    ch.add_argument("--layer", action="append", metavar="NAME",
                    help="check only this registered layer (repeatable)")
    ch.add_argument("--module", action="append", metavar="FILE",
                    help="a Python file to import first, which registers its own layers with "
                    "nflows_edu.gradcheck.register (repeatable)")
    add_table_parser(sub)
    add_assignment_parser(sub)
    return parser


# ------------------------------------------------------------------ commands
def cmd_demo(args):
    metrics = recipes.run(recipes.Run("realnvp", args.data, args.steps, 512, DEMO_LR, args.out,
                                      seed=args.seed, dtype=args.dtype, overwrite=True,
                                      progress=not args.no_progress, threads=args.threads,
                                      n_test=N_TEST_DEMO))
    return 130 if metrics["interrupted"] else 0


def cmd_train(args):
    if args.model == "iaf":
        raise UsageError("--model iaf cannot train on data: IAF's density of a given point is "
                         "sequential and has no VJP; IAF trains by reverse KL, in its sampling "
                         "direction (use maf for maximum likelihood)")
    if args.model in models.IMAGE_MODELS and args.data != "digits":
        raise UsageError(f"--model {args.model} is a flow on images: use --data digits")
    if args.coupling is not None and args.model != "glow":
        raise UsageError(f"--coupling chooses glow's coupling layers; {args.model} has no such "
                         f"option")
    if args.ema is not None and args.model == "flow_matching":
        raise UsageError("--ema: flow_matching trains by regression (train.fit_flow_matching), "
                         "which keeps no parameter average")
    if args.lr is None:
        args.lr = DIGITS_LR if args.data == "digits" else LR
    if args.data == "digits":
        if args.hidden is not None or args.beta2 is not None:
            raise UsageError("--hidden and --beta2 are for the 2-D toys: on digits the MADEs "
                             f"have {','.join(map(str, DIGITS_HIDDEN))} hidden units and Adam "
                             f"keeps its default beta2 {BETA2:g}")
    config = recipes.Run(args.model, args.data, args.steps, args.batch_size, args.lr, args.out,
                         seed=args.seed, n_layers=args.n_layers, hidden=args.hidden,
                         dtype=args.dtype, overwrite=args.overwrite,
                         progress=not args.no_progress, warmup=args.warmup, clip=args.clip,
                         threads=args.threads, beta2=args.beta2, coupling=args.coupling,
                         ema=args.ema)
    metrics = recipes.run(config)
    if args.data == "digits":
        return 0
    return 130 if metrics["interrupted"] else 0


def load_model(path):
    """``io.load``; a file that is not a model (its ValueError names the file) is a user error."""
    try:
        return io.load(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def cmd_sample(args):
    if args.out is not None and not args.out.endswith((".npy", ".csv")):
        raise UsageError(f"--out {args.out}: expected a file name ending in .npy or .csv")
    flow = load_model(args.model)
    x = flow.sample(args.n, np.random.default_rng(args.seed), temperature=args.temperature)
    if args.out is None:
        np.savetxt(sys.stdout, x, delimiter=",", fmt="%.17g")
        return 0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if args.out.endswith(".npy"):
        np.save(args.out, x)
    else:
        np.savetxt(args.out, x, delimiter=",", fmt="%.17g")
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _import_file(path):
    """Import the Python file at ``path`` as a module (it registers layers when imported)."""
    import importlib.util
    if not os.path.isfile(path):
        raise UsageError(f"--module {path}: no such file")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: one line that says where, not a traceback
        import traceback
        line = next((f.lineno for f in reversed(traceback.extract_tb(err.__traceback__))
                     if os.path.samefile(f.filename, path)), "?")
        raise UsageError(f"--module {path}: importing it raised {type(err).__name__} at line "
                         f"{line}: {err}") from None


def cmd_check(args):
    before = set(gradcheck.layer_names())
    for path in args.module or ():
        _import_file(path)
    names = args.layer
    if names is None and args.module:  # only the layers the files registered
        names = [n for n in gradcheck.layer_names() if n not in before]
    unknown = sorted(set(names or ()) - set(gradcheck.layer_names()))
    if unknown:
        raise UsageError(f"--layer: no registered layer {', '.join(unknown)}; registered: "
                         f"{', '.join(gradcheck.layer_names())}")
    print(gradcheck.CheckReport.HEADER)
    print(gradcheck.CheckReport.THRESHOLD_LINE)
    reports = []
    for report in gradcheck.check_all(args.seed, args.draws, names):
        print(report.row(), flush=True)
        reports.append(report)
    if args.draws > 1:
        print(f"\nworst of {args.draws} draws per layer:")
        print(gradcheck.CheckReport.HEADER.rsplit("result", 1)[0].rstrip())
        for name in dict.fromkeys(r.name for r in reports):
            mine = [r for r in reports if r.name == name]
            print(f"{name:28s} {max(r.roundtrip for r in mine):11.1e} "
                  f"{max(max(r.logdet, r.logdet_cancel) for r in mine):11.1e} "
                  f"{max(r.max_grad_error for r in mine):10.1e}")
    for name in dict.fromkeys(r.name for r in reports):
        bars, reason = gradcheck.thresholds(name)
        if reason:
            own = ", ".join(f"{k} {v:.0e}" for k, v in bars.items()
                            if v != gradcheck.THRESHOLDS[k])
            print(f"{name}: its own bars ({own}): {reason}")
    failed = [r.name for r in reports if not r.passed()]
    if failed:
        print(f"FAILED: {len(failed)} of {len(reports)} checks ({', '.join(dict.fromkeys(failed))})")
        return 1
    print(f"all {len(reports)} checks passed")
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "check": cmd_check}


def main(argv=None):
    r"""Run ``nflows-edu`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    # The command only writes files: never try to open a window. Chosen here, not at import,
    # so a notebook that imports this module or recipes.py (for the recipes and their
    # constants) keeps its inline figures.
    matplotlib.use("Agg")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return COMMANDS[args.command](args)
    except SystemExit as exit_:  # --help ends here, not the whole process
        return int(exit_.code or 0)
    except USER_ERRORS as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------ nflows-edu table
def add_table_parser(sub):
    from . import table
    ta = sub.add_parser("table", help="time inference, sampling, density and training of every "
                        "flow family at two sizes",
                        description="The survey's table, measured: for each family in "
                        "nflows_edu.table.FAMILIES, the time of inference (forward), sampling, "
                        "the density of outside points and one training step, at each D in "
                        "--dims, on one BLAS thread, with the network passes each needs and "
                        "the growth between the first and last D.")
    ta.add_argument("--dims", type=hidden_sizes, default=table.FULL["dims"],
                    help="comma-separated feature counts (default 16,64)")
    ta.add_argument("-n", type=positive_int, default=table.FULL["n"],
                    help="points per call (default 1024)")
    ta.add_argument("--hidden", type=hidden_sizes, default=table.FULL["hidden"],
                    help="hidden widths of every network (default 256,256)")
    ta.add_argument("--repeats", type=positive_int, default=table.FULL["repeats"],
                    help="timed calls per measurement, the fastest is kept (default 5)")
    ta.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ta.add_argument("--fast", action="store_true",
                    help="tiny sizes (D = 4, 8; N = 64; hidden 8,8; 1 repeat): checks that "
                    "the table runs, its times mean little")


def cmd_table(args):
    from . import table
    sizes = dict(table.FAST) if args.fast else dict(dims=tuple(args.dims), n=args.n,
                                                      hidden=tuple(args.hidden),
                                                      repeats=args.repeats)
    if len(sizes["dims"]) < 2:
        raise UsageError("--dims: expected at least two sizes, e.g. 16,64")
    rows = table.run(dtype=np.dtype(args.dtype), **sizes)
    print(table.format_table(rows, dtype=np.dtype(args.dtype), **sizes))
    return 0


COMMANDS["table"] = cmd_table


# ------------------------------------------------------------------ nflows-edu assignment
def add_assignment_parser(sub):
    asg = sub.add_parser("assignment", help="make and grade assignments from the library's "
                         "layers (list, make, grade)",
                         description="Assignments: 'list' the exercises, 'make' a student "
                         "folder (stubs, walkthrough notebook, nbgrader notebook, README), "
                         "'grade' one (results.json in Gradescope's format).")
    asub = asg.add_subparsers(dest="assignment_command", metavar="ACTION")
    asub.add_parser("list", help="every exercise the library offers")
    mk = asub.add_parser("make", help="write a student folder for some exercises")
    mk.add_argument("exercises", nargs="+", metavar="EXERCISE",
                    help="exercise names as 'assignment list' prints them, e.g. "
                    "AffineCoupling.backward")
    mk.add_argument("--out", required=True, help="the student folder to write")
    mk.add_argument("--force", action="store_true", help="overwrite an existing assignment")
    gr = asub.add_parser("grade", help="grade a student folder; writes DIR/results.json")
    gr.add_argument("folder", metavar="DIR")
    gr.add_argument("--timeout", type=float, default=60.0,
                    help="seconds per exercise before it gets 0 (default 60)")
    gr.add_argument("--draws", type=positive_int, default=2,
                    help="hidden random draws per registry entry and check (default 2)")
    gr.add_argument("--seed", type=seed_int, default=None,
                    help="fix the hidden draws (default: fresh entropy)")
    gr.add_argument("--jobs", type=positive_int, default=None,
                    help="exercises graded at once (default: the number of CPUs)")
    gr.add_argument("--results", default=None, metavar="FILE",
                    help="where to write the Gradescope JSON (default DIR/results.json)")


def cmd_assignment(args):
    from .assignment import catalogue
    if args.assignment_command == "list":
        print(catalogue.format_catalogue())
        return 0
    if args.assignment_command == "make":
        from .assignment.make import make
        try:
            paths = make(args.exercises, args.out, force=args.force)
        except ValueError as err:
            raise UsageError(str(err)) from None
        print("wrote " + ", ".join(paths))
        return 0
    if args.assignment_command == "grade":
        from .assignment.grade import format_results, grade
        if args.timeout <= 0:
            raise UsageError(f"--timeout: expected a positive number of seconds, got "
                             f"{args.timeout}")
        try:
            result = grade(args.folder, seed=args.seed, draws=args.draws,
                           timeout=args.timeout, jobs=args.jobs, results=args.results)
        except ValueError as err:
            raise UsageError(str(err)) from None
        print(format_results(result))
        print(f"wrote {args.results or os.path.join(args.folder, 'results.json')}")
        return 0
    raise UsageError("assignment: expected an action: list, make or grade")


COMMANDS["assignment"] = cmd_assignment


if __name__ == "__main__":  # python -m nflows_edu.cli, as python -m nflows_edu
    sys.exit(main())
