"""Several runs side by side: their curves on one plot, their figures in one table.

Validation loss against tokens is the fair axis across batch sizes and machines (steps and seconds are
not); training loss is drawn faintly beside it. The table takes each run's final figures and the latest
result of every benchmark task recorded in its metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.eval.report import fmt_value, new_figure, progress, read_records, to_html, to_markdown
from scratchlm.fileio import staged_dir

# The figure of each benchmark task shown in the table (chance-centered where the task has one).
HEADLINE = ("acc_norm_centered", "acc_centered", "acc_norm", "acc", "exact_match", "bpb", "loss")


def _name(run_dir: Path) -> str:
    return Path(run_dir).resolve().name


def summarize(run_dir: Path) -> dict:
    """Final figures of one run: steps, tokens, time, losses, and the latest value of each benchmark."""
    records = read_records(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
    last = progress(records)
    row = {
        "run": _name(run_dir),
        "steps": last.get("step"),
        "tokens": last.get("tokens"),
        "time_s": last.get("elapsed_s"),
        "train_loss": train[-1].get("loss") if train else None,
        "val_loss": evals[-1].get("val_loss") if evals else None,
        "val_bpb": evals[-1].get("val_bpb") if evals else None,
    }
    for record in records:
        if record.get("kind") == "benchmark":
            for task, metrics in record.get("results", {}).items():
                key = next((k for k in HEADLINE if k in metrics), None)
                if key is not None:
                    row[f"{task} {key}"] = metrics[key]  # later records overwrite earlier ones
    return row


def compare(run_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Write compare.md, compare.html and compare.png into `out_dir`; return the paths and the table."""
    if len(run_dirs) < 1:
        raise ScratchError("compare needs at least one run folder")
    out_dir = Path(out_dir)
    rows = [summarize(Path(d)) for d in run_dirs]
    fig = new_figure((7.2, 4.0))  # before anything is written: no matplotlib is a ScratchError
    with staged_dir(out_dir) as tmp:
        table = _draw_and_write(fig, run_dirs, rows, tmp)
    paths = {
        "markdown": out_dir / "compare.md",
        "html": out_dir / "compare.html",
        "plot": out_dir / "compare.png",
    }
    return {"paths": paths, **table}


def _draw_and_write(fig, run_dirs: list[str | Path], rows: list[dict], out_dir: Path) -> dict:
    """Draw the runs' curves on `fig`, and write compare.png, compare.md and compare.html into `out_dir`."""
    ax = fig.add_subplot()
    for run_dir in run_dirs:
        records = read_records(Path(run_dir))
        color = None
        val = [(r["tokens"], r["val_loss"]) for r in records if r.get("kind") == "eval" and "val_loss" in r]
        train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
        if train:
            (line,) = ax.plot(*zip(*train), alpha=0.35, linewidth=1, marker="." if len(train) < 20 else None)
            color = line.get_color()
        if val:
            ax.plot(*zip(*val), color=color, marker="o", markersize=3, label=f"{_name(run_dir)} (val)")
    ax.set(title="Loss against tokens (faint: train)", xlabel="tokens", ylabel="loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plot = out_dir / "compare.png"
    fig.savefig(plot)

    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = [[fmt_value(row.get(c, "")) if row.get(c) is not None else "-" for c in columns] for row in rows]
    blocks = [("h1", "Runs compared"), ("image", "Loss against tokens", plot), ("table", columns, table)]
    (out_dir / "compare.md").write_text(to_markdown(blocks, out_dir), encoding="utf-8")
    (out_dir / "compare.html").write_text(to_html(blocks, "scratchlm: runs compared"), encoding="utf-8")
    return {"columns": columns, "rows": rows, "markdown": to_markdown(blocks[2:], out_dir)}
