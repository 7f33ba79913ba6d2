"""Figure set-up, saving and command line shared by the example scripts (headless matplotlib).

Every example takes ``--out FOLDER`` (where its figure goes, created if missing; default ``./figures``) and
``--quick`` (short settings: a run of seconds that checks the script works, not the docs' figure).
``python -m benchmarks figures`` runs them all into ``docs/images``.
"""
import argparse
import os


def arguments(doc, argv=None, extra=None):
    """Parse ``--out`` and ``--quick`` (and the options ``extra(parser)`` adds) for an example whose module
    docstring is ``doc``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures",
                        help="folder for the figure, created if missing (default ./figures)")
    parser.add_argument("--quick", action="store_true",
                        help="short settings: seconds, to check the script runs (not the docs' figure)")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def output(folder, name):
    """``folder/name``, creating ``folder``."""
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def subplots(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save(fig, path, dpi=120):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt
    plt.close(fig)
    print(f"saved {path}")


def shac_curve(log):
    """``(time, env_steps, cost)`` lists of the scored epochs of a SHAC CSV log; prints its best and last cost."""
    import csv
    rows = [r for r in csv.DictReader(open(log)) if r["eval_cost"] != "nan"]
    time, steps, cost = ([float(r[k]) for r in rows] for k in ("time", "env_steps", "eval_cost"))
    print(f"{log}: best {min(cost):.2f}, last {cost[-1]:.2f} after {time[-1]:.0f} s and {steps[-1]:,.0f} steps")
    return time, steps, cost


def reference_lines(ax, references):
    """Horizontal lines for ``[(label, cost, line style), ...]`` (``trajopt.rl.tasks.references``)."""
    for label, value, style in references:
        ax.axhline(value, color="k", ls=style, lw=1, label=f"{label} ({value:.1f})")
