"""The ``mrisynthesis`` command line: synthesize, evaluate, models, bids (the BIDS App), and the
subcommands other packages register (``train``, from the training package).

Plug-in subcommands: a package adds ``NAME = "module:function"`` to the entry-point group
:data:`COMMAND_GROUP` (``[project.entry-points."mrisynthesis.commands"]`` in ``pyproject.toml``);
``mrisynthesis NAME ARGS...`` then calls ``function(ARGS)`` and exits with its return value. This is how
``mrisynthesis train`` reaches ``Training.cli.main`` while the core never imports ``Training``
(the Slicer extension ships the core without it).

Every error a user can cause is printed as one line (``error: ...``) with exit status 2
(bad input/option, unwritable output) or 1 (out of memory); nothing is written and no input is
modified. Ctrl-C exits with 130, SIGTERM with 143 (temporary files removed), a closed stdout pipe
(``| head``) with 141 and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from . import __version__
from .atomic import Terminated
from .conventions import DEFAULT_DIRECTION, DIRECTION_ALIASES, PERCENTILE_HIGH, PERCENTILE_LOW
from .engines import ENGINE_CHOICES
from .errors import Cancelled, MRISynthesisError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["COMMAND_GROUP", "NOT_FOR_DIAGNOSIS", "exit_status", "main", "plugin_commands", "quiet_when_pipe_closes"]

NOT_FOR_DIAGNOSIS = "Synthetic images are not for diagnosis."
#: Entry-point group of the subcommands other packages add (see the module docstring).
COMMAND_GROUP = "mrisynthesis.commands"
BUILT_IN_COMMANDS = ("synthesize", "evaluate", "models", "bids")
#: What to install for a plug-in subcommand that is not registered here (e.g. inside Slicer).
PLUGIN_HINTS = {"train": "the training package (Training/), which this installation does not have; install the "
                         "project with pip (pip install -e '.[train]' in a checkout), or run python -m Training",
                "prepare-pairs": "the training package (Training/), which this installation does not have; install "
                                 "the project with pip (pip install -e '.[train]' in a checkout), or run "
                                 "python -m Training.prepare_pairs"}


def plugin_commands() -> dict:
    """``{name: entry point}`` of the subcommands installed packages register in :data:`COMMAND_GROUP`
    (names of built-in subcommands cannot be taken)."""
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group=COMMAND_GROUP) if entry.name not in BUILT_IN_COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: ... (see --help)`` and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mrisynthesis",
        description=f"Synthesize a missing MRI contrast (T1w <-> T2w). {NOT_FOR_DIAGNOSIS}")
    parser.add_argument("--version", action="version", version=f"mrisynthesis {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    syn = commands.add_parser("synthesize", help="synthesize the other contrast of a NIfTI or NRRD volume",
                              description="Synthesize a T2w volume from a T1w volume (or the reverse). The output "
                                          "has exactly the input's grid and orientation; values are normalised "
                                          f"units (0 background, 1 = {PERCENTILE_HIGH:g}th brain percentile). "
                                          f"{NOT_FOR_DIAGNOSIS}")
    syn.add_argument("input", help="input 3D volume: NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr)")
    syn.add_argument("-o", "--output", required=True,
                     help="output volume, NIfTI or NRRD by its suffix (NRRD is written in LPS); never the input")
    syn.add_argument("--model", default=None,
                     help="catalog id (see 'mrisynthesis models') or a .safetensors checkpoint; "
                          "default: the shipped default model of --direction")
    syn.add_argument("--direction", default=None, choices=sorted(DIRECTION_ALIASES),
                     help=f"{DEFAULT_DIRECTION} (default when no model is named) or the reverse; must match the model")
    syn.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                     help="auto: CUDA, then Apple MPS, then CPU (default: auto)")
    syn.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default: 8)")
    syn.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="arithmetic of the network: auto = bf16 on CPUs with native bfloat16 (AVX-512 BF16 "
                          "or AMX) and on CUDA GPUs that support it (else fp16), fp32 elsewhere; fp32 gives "
                          "reproducible results on any machine (default: auto)")
    syn.add_argument("--engine", default="auto", choices=list(ENGINE_CHOICES),
                     help="what runs the network: auto (default) picks the engine measured fastest for this "
                          "network on this kind of CPU, with the same result within 1e-5 (on x86 CPUs in float32: "
                          "ONNX Runtime for every shipped model); torch is the PyTorch reference")
    syn.add_argument("--brain-mask", "--mask", dest="brain_mask", default="auto", metavar="auto|extract|none|FILE",
                     help="auto (default): keep a skull-stripped input as it is, brain-extract a whole-head scan "
                          "(deepbet; docs/brain-mask-decision.md says how it decides); extract: always brain-extract; "
                          "none: no extraction; FILE: a brain mask (NIfTI or NRRD) on the input's grid "
                          "(0/1, labels > 0 = brain, or probabilities: above 0.5 = brain). The output is 0 "
                          "outside the mask")
    syn.add_argument("--save-mask", default=None, metavar="PATH",
                     help="also write the brain mask used (NIfTI or NRRD by its suffix, 1 = brain, 0 = background, input's grid)")
    syn.add_argument("--tta", action="store_true", help="average with the left-right mirrored prediction")
    syn.add_argument("--uncertainty", default=None, metavar="PATH",
                     help="also write a per-voxel standard deviation map (VAE models only)")
    syn.add_argument("--preview", default=None, metavar="PNG",
                     help="also write a PNG preview (input | synthetic, middle axial slices)")
    syn.add_argument("--reference", default=None, metavar="PATH",
                     help="a real, registered volume of the target contrast on the input's grid: also print MAE, "
                          "PSNR, SSIM and MI against it (the conventions of 'evaluate')")
    syn.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = commands.add_parser("evaluate", help="compare a synthetic volume with the real one",
                             description="MAE, MSE, PSNR, SSIM, mutual information inside a mask and on whole "
                                         "slices; every number is printed with its conventions.")
    ev.add_argument("--pred", required=True, help="synthetic volume (NIfTI or NRRD)")
    ev.add_argument("--ref", required=True, help="real reference volume (NIfTI or NRRD) on the same grid")
    ev.add_argument("--mask", default=None, help="brain mask (NIfTI or NRRD); default: the reference's foreground mask (preprocessing.brain_mask)")
    ev.add_argument("--normalisation", default="model-units",
                    choices=["model-units", "percentile", "minmax", "zscore", "none"],
                    help="model-units (default, the conventions of the README's model table and of training "
                         "validation): the reference is normalised (percentiles "
                         f"{PERCENTILE_LOW:g}-{PERCENTILE_HIGH:g} inside the mask -> [0, 1]) "
                         "and the synthetic volume, already in those units, is compared as it is; percentile, "
                         "minmax, zscore: both volumes normalised the same way; none: values as they are")
    ev.add_argument("--per-slice", action="store_true", help="also report per-slice values")
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")

    md = commands.add_parser("models", help="list the models in the catalog")
    md.add_argument("--direction", default=None, choices=sorted(DIRECTION_ALIASES), help="only this direction")
    md.add_argument("--json", action="store_true", help="print JSON")

    from . import bids_app

    bids_app.add_parser(commands)

    for name, entry in sorted(plugin_commands().items()):
        package = entry.value.split(":")[0].split(".")[0]
        commands.add_parser(name, help=f"from the {package} package (see 'mrisynthesis {name} --help')",
                            add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugin = plugin_commands().get(argv[0]) if argv else None
    if plugin is not None:  # e.g. 'train': the training package's own command line
        return plugin.load()(argv[1:])
    if argv and argv[0] in PLUGIN_HINTS:
        print(f"error: 'mrisynthesis {argv[0]}' needs {PLUGIN_HINTS[argv[0]]}", file=sys.stderr)
        return 2
    return exit_status(_main, argv)


def exit_status(command, *args, interrupted=None) -> int:
    """Run ``command(*args)`` (it returns an exit status) and turn what a user can cause into one
    line on stderr and the exit status: the one policy of every command of the project
    (``mrisynthesis``, ``mrisynthesis train``, ``python -m Training.export``, the studies).

    - :class:`~MRISynthesisLib.errors.MRISynthesisError`: ``error: <message>``, 2;
    - :class:`~MRISynthesisLib.errors.Cancelled`: ``cancelled: ...``, 130;
    - Ctrl-C: 130, SIGTERM (:class:`~MRISynthesisLib.atomic.Terminated`): 143 (temporary files are
      removed as the stack unwinds); the line says ``interrupted (...)`` and then ``interrupted()``'s
      text (default: nothing was written);
    - out of memory (a ``MemoryError``, or PyTorch's out-of-memory ``RuntimeError``): 1;
    - stdout closed by its reader (``| head``): 141, quietly.

    Any other exception is a bug and keeps its traceback.
    """
    from .atomic import terminate_cleanly

    terminate_cleanly()  # SIGTERM unwinds like Ctrl-C
    with quiet_when_pipe_closes():
        try:
            return command(*args)
        except Cancelled as error:
            print(f"cancelled: {error}", file=sys.stderr)
            return 130
        except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM (atomic.Terminated)
            what = interrupted() if interrupted is not None else "nothing was written"
            print(f"interrupted ({error or 'Ctrl-C'}); {what}", file=sys.stderr)
            return 143 if isinstance(error, Terminated) else 130
        except MRISynthesisError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except MemoryError:
            print("error: out of memory: the volume and the model do not fit in this machine's memory; "
                  "try a smaller --batch-size or a smaller volume", file=sys.stderr)
            return 1
        except RuntimeError as error:  # PyTorch reports a GPU (or CPU allocator) out of memory as a RuntimeError
            from .synthesis import is_out_of_memory

            if not is_out_of_memory(error) and "can't allocate memory" not in str(error):
                raise
            from .errors import first_line

            print(f"error: out of memory ({first_line(error)}); try a smaller --batch-size, --device cpu or a "
                  "smaller volume", file=sys.stderr)
            return 1


@contextlib.contextmanager
def quiet_when_pipe_closes():
    """``mrisynthesis ... | head``: when the reader closes the pipe, stop printing quietly.

    Exit status 141 (128 + SIGPIPE, as Unix tools); no BrokenPipeError traceback, also not at exit.
    """
    try:
        yield
        sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None


def _main(argv) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return {"synthesize": _synthesize, "evaluate": _evaluate, "models": _models, "bids": _bids}[args.command](args)


def _synthesize(args) -> int:
    """``mrisynthesis synthesize``: the arguments as a :class:`~MRISynthesisLib.pipeline.SynthesisRequest`,
    :func:`~MRISynthesisLib.pipeline.run`, then every output written together (or none)."""
    from .brain_extraction import CHOICES as MASK_CHOICES
    from .errors import InputError
    from .io import check_output_path, write_outputs
    from .pipeline import SynthesisRequest, run

    mask_file = args.brain_mask if args.brain_mask.lower() not in MASK_CHOICES else None
    outputs = [p for p in (args.output, args.uncertainty, args.preview, args.save_mask) if p]
    inputs = [args.input, mask_file, args.reference]
    for path in (args.output, args.uncertainty, args.save_mask):
        if path:
            check_output_path(path, inputs=inputs)
    if args.preview:
        check_output_path(args.preview, inputs=inputs, suffixes=(".png",))
    if len({Path(p).resolve() for p in outputs}) < len(outputs):
        raise InputError("--output, --uncertainty, --preview and --save-mask must be different files")
    request = SynthesisRequest(args.input, model=args.model, direction=args.direction, device=args.device,
                               precision=args.precision, batch_size=args.batch_size, brain_mask=args.brain_mask,
                               uncertainty=bool(args.uncertainty), flip_tta=args.tta, reference=args.reference,
                               engine=args.engine)
    progress, close = _stage_progress_bars(args.quiet)
    try:
        result = run(request, progress=progress)
    finally:
        close()
    writers = [(args.output, result.synthetic)]  # volumes are written in the format of their suffix
    if args.save_mask:
        writers.append((args.save_mask, result.input.with_array(result.mask_used().astype("float32"))))
    if result.uncertainty is not None:
        writers.append((args.uncertainty, result.uncertainty))
    if args.preview:
        from .preview import render_preview, write_png

        picture = render_preview(result.input, result.synthetic)
        writers.append((args.preview, lambda tmp: write_png(picture, tmp)))
    written = write_outputs(writers)  # all or none
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in result.notes:
        print(note, file=sys.stderr)
    if result.score is not None:
        from .metrics import format_table

        print(format_table(result.score))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    print(NOT_FOR_DIAGNOSIS, file=sys.stderr)
    return 0


def _stage_progress_bars(quiet: bool):
    """``progress(stage, done, total)`` for :func:`MRISynthesisLib.pipeline.run`: one bar per stage
    that reports steps (brain extraction, synthesis), and a function that closes them."""
    labels = {"brain extraction": ("brain extraction", "step"), "synthesis": ("synthesizing", "slice")}
    bars = {stage: _progress_bar(quiet, label, unit=unit) for stage, (label, unit) in labels.items()}

    def progress(stage, done, total):
        if stage in bars and bars[stage][0] is not None and total:
            bars[stage][0](done, total)

    def close():
        for _, close_bar in bars.values():
            close_bar()

    return progress, close


def _bids(args) -> int:
    from .bids_app import main as bids_main

    return bids_main(args)


def _progress_bar(quiet: bool, label: str, unit: str = "slice"):
    if quiet:
        return None, lambda: None
    import time

    from tqdm import tqdm

    bars = []  # created at the first report, so input errors print no empty bar
    started = time.time()  # the rate counts from here, not from the first report (which came after a batch)

    def update(done, total):
        if not bars:
            bar = tqdm(total=total, unit=unit, desc=label, file=sys.stderr, dynamic_ncols=True)
            bar.start_t = bar.last_print_t = started
            bars.append(bar)
        bars[0].total = total
        bars[0].update(done - bars[0].n)
        return True

    def close():
        if bars:
            bars[0].close()

    return update, close


def _evaluate(args) -> int:
    from .io import check_output_path, load_volume
    from .metrics import format_table, json_compatible, score
    from .pipeline import load_brain_mask_file, require_same_grid

    if args.json:
        check_output_path(args.json, inputs=[args.pred, args.ref, args.mask], suffixes=(".json",))
    pred, ref = load_volume(args.pred), load_volume(args.ref)
    require_same_grid(pred, ref, "--pred", "--ref")
    mask = None
    if args.mask:
        mask = load_brain_mask_file(args.mask, ref, option="--mask", other_name="--ref")
    result = score(pred, ref, mask, normalisation=args.normalisation, per_slice=args.per_slice,
                   mask_description=f"given ({Path(args.mask).name})" if args.mask else None)
    if args.json:  # before printing, so a closed stdout (| head) cannot lose it
        _write_json_atomic(Path(args.json), json_compatible(result))
    print(format_table(result))
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _write_json_atomic(path: Path, data) -> None:
    from .io import write_outputs

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, allow_nan=False)

    write_outputs([(path, write)])


def _models(args) -> int:
    from . import catalog

    direction = DIRECTION_ALIASES.get(args.direction) if args.direction else None
    entries = catalog.list_models(direction)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return 0
    folders = f"catalogs: {catalog.resources_dir() / catalog.CATALOG_NAME} (shipped), " \
              f"{catalog.user_models_dir() / catalog.CATALOG_NAME} (yours: python -m Training.export)"
    if not entries:
        print(f"no models installed ({folders})")
        return 0
    print(f"{'id':32} {'direction':10} {'default':7} title")
    for e in entries:
        print(f"{e.id:32} {e.direction:10} {'yes' if e.default else '':7} {e.title}{' (yours)' if e.is_users else ''}")
    listed = {e.id for e in entries}
    retired = [r.id for r in catalog.retired_models() if r.replaced_by in listed]
    if retired:
        print(f"retired (naming one says what replaces it): {', '.join(retired)}")
    print(folders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
