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
