"""Figure set-up and saving shared by the example scripts (headless matplotlib)."""


def subplots(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save(fig, path, dpi=120):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
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
