"""The ``cellae`` command: parse arguments, call one function per command, print user errors in one line."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cellae import __version__
from cellae.errors import CellaeError


def _add_data_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
        help="data settings, as in a config's data section: --set channels=[DAPI,mito] "
             "fields.class_column=treatment",
    )


def _data_config(args: argparse.Namespace, **given: object) -> object:
    """The data section from the command's options and its --set overrides (with or without
    the ``data.`` prefix), validated as a run's would be."""
    from dataclasses import asdict

    from cellae.sections import DataConfig, validate_data
    from cellae.typed_config import apply_overrides, build_section

    overrides = [text.removeprefix("data.") for text in args.overrides]
    values = apply_overrides(asdict(DataConfig(**given)), overrides, DataConfig)  # type: ignore[arg-type]
    return validate_data(build_section(DataConfig, values, prefix="data"))


def _add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    from typing import get_args

    from cellae.sections import (
        IMAGE_SIZES,
        BackgroundMode,
        ColorMode,
        DataConfig,
        NormalizeMode,
        ResizeMode,
    )

    # defaults and choices are the data config's, so the command and a YAML run agree
    defaults = DataConfig()
    sizes = ", ".join(str(size) for size in IMAGE_SIZES)
    parser.add_argument("--size", type=int, default=defaults.image_size,
                        help=f"output side in pixels ({sizes})")
    parser.add_argument("--color", choices=get_args(ColorMode), default=defaults.color)
    parser.add_argument("--resize", choices=get_args(ResizeMode), default=defaults.resize)
    parser.add_argument("--background", choices=get_args(BackgroundMode),
                        default=defaults.background)
    parser.add_argument("--normalize", choices=get_args(NormalizeMode), default=defaults.normalize,
                        help="per_cell: standardise each cell's interior colour; local: keep its fine "
                        "detail only (both need fill_mean)")
    parser.add_argument("--cache-dir", default=defaults.cache_dir, help="where caches are kept")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="processes for decoding (0: all cores)")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad file")


class _Subcommands:
    """Adds every subcommand with the shared options (``--debug``)."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        if "help" in kwargs and "description" not in kwargs:
            # only the first letter raised: str.capitalize() would lower "AE", "YAML", "NIH"
            text = str(kwargs["help"])
            kwargs["description"] = text[:1].upper() + text[1:] + "."
        return self._action.add_parser(name, parents=[self._common], **kwargs)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellae",
        description="Train and inspect autoencoders and VAEs on single-cell microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"cellae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # --debug is accepted after the command too; SUPPRESS keeps a later default from undoing it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    commands = _Subcommands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
                            common)

    data = commands.add_parser("data", help="inspect, prepare and download image data")
    data_commands = _Subcommands(
        data.add_subparsers(dest="data_command", metavar="ACTION", required=True), common
    )
    inspect = data_commands.add_parser(
        "inspect", help="counts per class and patient, image sizes, skipped files"
    )
    inspect.add_argument("source", help="class folder, zip, CSV (file,label[,patient]) or 'synthetic'")
    inspect.add_argument("--strict", action="store_true", help="fail on the first bad file")
    _add_data_overrides(inspect)
    prepare = data_commands.add_parser("prepare", help="build (or reuse) the preprocessed cache")
    prepare.add_argument("source", help="class folder, zip, CSV (file,label[,patient]) or 'synthetic'")
    _add_preprocessing_options(prepare)
    _add_data_overrides(prepare)
    make_fields = data_commands.add_parser(
        "make-fields", help="write a small synthetic fluorescence experiment (fields + masks)")
    make_fields.add_argument("folder", help="a new or empty folder")
    make_fields.add_argument("--fields", type=int, default=8, help="fields of view (default 8)")
    make_fields.add_argument("--seed", type=int, default=0)
    download = data_commands.add_parser("download", help="fetch the NIH malaria cell_images.zip")
    download.add_argument("--to", default="data", help="folder to save the zip in (default: data)")
    download.add_argument("--url", default=None, help="download from this address instead")
    download.add_argument("--sha256", default=None, help="expected checksum, verified when given")

    train = commands.add_parser("train", help="train an AE or VAE from a YAML config")
    train.add_argument("config", nargs="?", help="YAML config (see configs/)")
    train.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=3 model.latent_dim=50",
    )
    train.add_argument("--out", default="runs", help="parent folder for run folders (default: runs)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and stop")
    train.add_argument("--no-eval", action="store_true", help="skip evaluation after training")

    evaluate = commands.add_parser("evaluate", help="figures and metrics for a trained run")
    evaluate.add_argument("run_dir", help="a run folder written by 'cellae train'")
    evaluate.add_argument("--data", default=None, help="evaluate on another source (folder, zip or CSV)")

    embed = commands.add_parser("embed", help="write the latent codes of any source")
    embed.add_argument("run_dir", help="a run folder written by 'cellae train'")
    embed.add_argument("source", help="class folder, zip, CSV (file,label[,patient]) or 'synthetic'")
    embed.add_argument("--out", required=True, help="output file: .npz, .csv, .parquet or .h5ad")
    embed.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    sweep = commands.add_parser("sweep", help="train a grid of runs from one sweep file")
    sweep.add_argument("sweep", nargs="?",
                       help="sweep YAML (see configs/sweeps/); not needed with --resume")
    sweep.add_argument("--out", default="runs",
                       help="parent folder for the sweep folder (default: runs)")
    sweep.add_argument("--resume", metavar="SWEEP_DIR",
                       help="continue an interrupted sweep, or collect a submitted one")
    sweep.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys of every run, e.g. --set data.source=data/cell_images.zip",
    )
    sweep.add_argument(
        "--only", nargs="+", default=[], metavar="SETTING",
        help="run only these settings of the file (by name, each with its folds and seeds), "
             "in this order; the first is the one the others are paired with in summary.md",
    )
    sweep.add_argument(
        "--launcher", choices=("local", "slurm"), default=None,
        help="local: one run after another here (default); slurm: one SLURM job per run "
             "(needs cellae[slurm]), collected later with --resume",
    )
    sweep.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="local launcher: N runs at once, each in its own process with its share of the "
             "cores (and GPUs); output in the sweep's logs/ folder (default 1)",
    )
    slurm = sweep.add_argument_group(
        "SLURM jobs (--launcher slurm; remembered by the sweep for later submissions)")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="partition to submit to")
    slurm.add_argument("--slurm-time", type=int, metavar="MINUTES", help="time limit of each job")
    slurm.add_argument("--slurm-gpus-per-node", type=int, metavar="N", help="GPUs per job (default 1)")
    slurm.add_argument("--slurm-cpus-per-task", type=int, metavar="N", help="CPU cores per job")
    slurm.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per job")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option without its dashes, e.g. account=proj1 "
                            "(repeatable)")

    report = commands.add_parser("report", help="compare runs in one HTML page")
    report.add_argument("runs", nargs="+", help="run or sweep folders")
    report.add_argument("--out", default="report.html",
                        help="output HTML, report.md is written beside it (default: report.html)")
    report.add_argument("--overwrite", action="store_true",
                        help="replace files at --out that an earlier report did not write")
    return parser


def _file_among_overrides(given: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The config or sweep file, also when it was written after ``--set a=1 b=2``.

    ``--set`` takes every value up to the next option, so a file named after it lands among
    the overrides; one value there without "=" is that file (a key=value always has one).
    """
    files = [o for o in overrides if "=" not in o]
    if given is not None or len(files) != 1:
        return given, overrides
    return files[0], [o for o in overrides if o != files[0]]


def _run(args: argparse.Namespace) -> int:
    if args.command in ("train", "sweep"):
        place = "config" if args.command == "train" else "sweep"
        found, args.overrides = _file_among_overrides(getattr(args, place), args.overrides)
        setattr(args, place, found)
    if args.command == "data":
        return _run_data(args)
    if args.command in ("train", "evaluate", "embed", "sweep"):
        from cellae.machine import keep_freed_memory

        keep_freed_memory()  # PyTorch's CPU batches reuse freed pages (see cellae.machine)
    if args.command == "train":
        from cellae.config import load_config

        if args.resume:
            from cellae.training import resume

            if args.config is not None:
                raise CellaeError(f"give a config or --resume {args.resume}, not both: a resumed "
                                  "run keeps its own config.yaml (a new config is a new run)")
            run_dir = resume(Path(args.resume), evaluate=not args.no_eval,
                             overrides=args.overrides)
        else:
            if args.config is None and not args.print_config:
                raise CellaeError("give a config file, e.g. cellae train configs/quickstart.yaml")
            config = load_config(args.config, args.overrides, check_paths=not args.print_config)
            if args.print_config:
                print(config.to_yaml(), end="")
                return 0
            from cellae.training import train

            run_dir = train(config, Path(args.out), evaluate=not args.no_eval)
        print(f"run folder: {run_dir}")
        return 0
    if args.command == "evaluate":
        from cellae.evaluate import evaluate_run

        evaluate_run(Path(args.run_dir), data=args.data)
        return 0
    if args.command == "embed":
        from cellae.embed import embed_source

        out = embed_source(Path(args.run_dir), args.source, Path(args.out), args.overwrite)
        print(f"wrote {out}")
        return 0
    if args.command == "sweep":
        from cellae.sweep import run_sweep

        if args.sweep is None and not args.resume:
            raise CellaeError("give a sweep file, e.g. cellae sweep configs/sweeps/quickstart.yaml")
        if args.resume and (args.overrides or args.only):
            raise CellaeError("--set and --only cannot change a sweep that is resumed; it keeps "
                              "its values and settings")
        from cellae.sweep import runs_in_jobs, slurm_parameters

        slurm = slurm_parameters(args.slurm_partition, args.slurm_time, args.slurm_gpus_per_node,
                                 args.slurm_cpus_per_task, args.slurm_mem_gb, args.slurm_option)
        if slurm and args.launcher != "slurm":
            raise CellaeError("the --slurm-* options go with --launcher slurm")
        # a resumed sweep runs from the copy frozen into its folder; the file is not needed
        sweep_dir = run_sweep(Path(args.sweep or ""), Path(args.out), resume=args.resume,
                              overrides=args.overrides, launcher=args.launcher, slurm=slurm,
                              jobs=args.jobs, only=args.only)
        print(f"sweep folder: {sweep_dir}")
        if runs_in_jobs(sweep_dir):
            print(f"collect with: cellae sweep --resume {sweep_dir}")
        return 0
    if args.command == "report":
        from cellae.report import write_report

        html = write_report([Path(p) for p in args.runs], Path(args.out),
                            overwrite=args.overwrite)
        print(f"wrote {html} and {html.with_suffix('.md')}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _run_data(args: argparse.Namespace) -> int:

    if args.data_command == "inspect":
        from cellae.data.inspection import inspect_source

        print(inspect_source(_data_config(args, source=args.source, strict=args.strict)))
        return 0
    if args.data_command == "prepare":
        from cellae.data.cache import prepare_cache

        data = _data_config(
            args, source=args.source, image_size=args.size, color=args.color, resize=args.resize,
            background=args.background, normalize=args.normalize, cache_dir=args.cache_dir,
            strict=args.strict, workers=args.workers,
        )
        cache = prepare_cache(data, progress=sys.stderr.isatty())  # type: ignore[arg-type]
        print(
            f"cache: {cache.path} ({len(cache)} images, {cache.images.shape[1]}x"
            f"{cache.images.shape[2]}x{cache.images.shape[3]}, classes {', '.join(cache.class_names)})"
        )
        channels = cache.meta.get("channels", {})
        if channels:
            print(f"channels: {', '.join(channels['names'])} ({channels['intensity']} from "
                  f"{channels['dtype']}); clipped: " + ", ".join(
                      f"{name} {100 * lo:.2f}% low {100 * hi:.2f}% high" for name, lo, hi in zip(
                          channels["names"], channels["clipped_low"], channels["clipped_high"],
                          strict=True)))
        return 0
    if args.data_command == "make-fields":
        from cellae.data.synthetic_fields import write_fields

        counts = write_fields(Path(args.folder), n_fields=args.fields, seed=args.seed)
        print(f"wrote {counts['fields']} fields ({counts['objects']} cells) to {args.folder}: "
              f"images/, masks/, fields.csv, cells.csv")
        return 0
    if args.data_command == "download":
        from cellae.data.download import DEFAULT_URL, download

        path = download(args.url or DEFAULT_URL, Path(args.to), expected_size=None, sha256=args.sha256,
                        progress=sys.stderr.isatty())
        print(f"downloaded {path}")
        return 0
    raise AssertionError(f"unhandled data command {args.data_command}")


_MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                   errno.EPERM}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except CellaeError as exc:
        if args.debug:
            raise
        print(f"cellae: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("cellae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (cellae data inspect ... | head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # the machine, not cellae: a full disk or quota, a read-only or vanished folder. Every
        # file that matters is written atomically, so what was there before is still whole.
        if args.debug or exc.errno not in _MACHINE_ERRORS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        # permission errors come from reading as well as writing; a full disk only from writing
        verb = "access" if exc.errno in (errno.EACCES, errno.EPERM) else "write"
        print(f"cellae: error: cannot {verb}{where}: {exc.strerror}; files written earlier are "
              f"intact", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
