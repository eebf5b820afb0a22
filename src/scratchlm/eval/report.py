"""The report card of a run: one Markdown page and the same page as standalone HTML, with PNG plots.

Everything comes from the run folder: `metrics.jsonl` (training and validation records written during
training, and the `benchmark` records `scratchlm eval --run` appends later), `config.yaml`, and the
final (or newest) model folder's manifest. The report is rebuilt from those files each time, so later
evaluations are added to it, and none is lost by rebuilding.

The page is built as a list of blocks (heading, text, table, code, image) rendered twice, to Markdown
and to HTML; the HTML embeds the plots as data URIs so a single file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from scratchlm import __version__
from scratchlm.errors import ScratchError
from scratchlm.fileio import staged_dir
from scratchlm.model import ModelConfig, Transformer
from scratchlm.plan import DEFAULT_MFU
from scratchlm.train.run_dir import RunDir, resolve_model_dir, step_of

MAX_SAMPLES = 3


def read_records(run_dir: Path) -> list[dict]:
    """Every record of the run's metrics.jsonl (through its one reader, `RunDir.read_metrics`)."""
    run = RunDir(run_dir)
    if not run.metrics_path.is_file():
        raise ScratchError(f"{run_dir} has no metrics.jsonl; give the folder of a training run")
    return run.read_metrics()


def progress(records: list[dict]) -> dict:
    """The furthest training or validation record: training logs every N steps, but validates at the end."""
    timed = [r for r in records if r.get("kind") in ("train", "eval") and r.get("step") is not None]
    return max(timed, key=lambda r: r["step"]) if timed else {}


def benchmark_rows(records: list[dict]) -> list[list[str]]:
    """One table row per (benchmark record, task): when, which step, task and its metrics."""
    rows = []
    for record in records:
        if record.get("kind") != "benchmark":
            continue
        for task, metrics in record.get("results", {}).items():
            figures = ", ".join(f"{k} {fmt_value(v)}" for k, v in metrics.items())
            rows.append([record.get("time", ""), str(record.get("step", "")), task, figures])
    return rows


def fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def throughput_rows(run_dir: Path, records: list[dict]) -> list[list[str]]:
    """Measured tokens/s and MFU beside `scratchlm plan`'s estimate for the same model and hardware.

    Measured: the median over training records after the first (which includes warm-up). The planner's
    tokens/s is its default MFU times the run's own peak, which each record implies: tokens/s x FLOPs per
    token / MFU (train/peak_flops.py's datasheet or CPU figure, over all ranks). [] without a model section
    or MFU records (a fabricated or non-causal-LM run).
    """
    section = RunDir(run_dir).read_config().get("model")
    train = [r for r in records if r.get("kind") == "train" and r.get("mfu") and r.get("tokens_per_s")]
    if not isinstance(section, dict) or not train:
        return []
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_dict(section))
    window = train[1:] or train

    def flops(record: dict) -> float:  # a context curriculum logs each step's context
        return model.flops_per_token(training=True, context_length=record.get("context"))

    tokens_per_s = statistics.median([r["tokens_per_s"] for r in window])
    mfu = statistics.median([r["mfu"] for r in window])
    peak = statistics.median([r["tokens_per_s"] * flops(r) / r["mfu"] for r in window])
    planned = DEFAULT_MFU * peak / flops(window[-1])
    last = progress(records)
    rows = [
        ["tokens/s", f"{tokens_per_s:,.0f}", f"{planned:,.0f}"],
        ["MFU", f"{mfu:.1%}", f"{DEFAULT_MFU:.0%} (assumed: scratchlm plan --mfu)"],
        ["FLOPs per token", "", f"{flops(window[-1]):.3e}"],
        ["peak FLOP/s (all ranks)", f"{peak:.3e}", "same"],
    ]
    if last.get("tokens") and last.get("elapsed_s"):
        rows.append(
            ["time for the run's tokens", f"{last['elapsed_s']:.1f} s", f"{last['tokens'] / planned:.1f} s"]
        )
    return rows


# --- plots -------------------------------------------------------------------------------------------


def _series(records: list[dict], kind: str, x: str, y: str) -> tuple[list, list]:
    points = [
        (r[x], r[y])
        for r in records
        if r.get("kind") == kind and r.get(x) is not None and r.get(y) is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas (no pyplot global state); a one-line ScratchError if
    matplotlib cannot be imported, saying what to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        cause = (str(e).splitlines() or [type(e).__name__])[0]
        raise ScratchError(
            f"the plots need matplotlib, which cannot be imported ({cause}); "
            "install it with: pip install 'matplotlib>=3.7'"
        ) from None
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot(path: Path, title: str, xlabel: str, ylabel: str, lines: list[tuple[str, list, list]], logy=False):
    """One PNG with one line per (label, xs, ys)."""
    fig = new_figure((6.4, 3.6))
    ax = fig.add_subplot()
    for label, xs, ys in lines:
        if xs:
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 20 else None, markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# The figures alignment runs log (scratchlm.align), each plotted against the step when present.
ALIGNMENT_FIGURES = {
    "score": "Reward-model score of the policy's answers",
    "gold": "Gold score (the hidden judge; never trained on)",
    "kl": "KL to the reference model (nats per answer)",
    "reward": "Reward of the sampled answers",
    "rewards/margins": "DPO: chosen minus rejected implicit reward",
    "accuracy": "Held-out pair accuracy",
}


def training_plots(records: list[dict], out_dir: Path) -> list[tuple[str, Path]]:
    """(caption, png) for loss vs tokens, loss vs time, learning rate and throughput."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for x, xlabel, name in (("tokens", "tokens", "loss_vs_tokens"), ("elapsed_s", "seconds", "loss_vs_time")):
        lines = [
            ("train", *_series(records, "train", x, "loss")),
            ("validation", *_series(records, "eval", x, "val_loss")),
        ]
        if any(xs for _, xs, _ in lines):
            path = out_dir / f"{name}.png"
            _plot(path, f"Loss against {xlabel}", xlabel, "loss (nats/token)", lines)
            plots.append((f"Loss against {xlabel}", path))
    for key, title in ALIGNMENT_FIGURES.items():  # an RL or preference run's curves, where logged
        lines = [(kind, *_series(records, kind, "step", key)) for kind in ("train", "eval")]
        if any(xs for _, xs, _ in lines):
            path = out_dir / f"{key.replace('/', '_')}.png"
            _plot(path, title, "step", key, [line for line in lines if line[1]])
            plots.append((title, path))
    for key, title, ylabel in (("lr", "Learning rate", "lr"), ("tokens_per_s", "Throughput", "tokens/s")):
        xs, ys = _series(records, "train", "step", key)
        if xs:
            path = out_dir / f"{key}.png"
            _plot(path, title, "step", ylabel, [(key, xs, ys)])
            plots.append((title, path))
    return plots


# --- facts about the run -----------------------------------------------------------------------------


def environment() -> dict:
    """Where this report was made: versions, processor, accelerator, threads."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "scratchlm": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def fingerprints(run_dir: Path) -> dict:
    """What pins the run's inputs and outputs: corpus bytes, tokenizer, weights (sha256 each)."""
    found: dict[str, str] = {}
    corpus = run_corpus(run_dir)
    if corpus:
        try:
            from scratchlm.data import load_corpus

            found[f"data: {corpus} (source bytes)"] = load_corpus(corpus).sha256
        except ScratchError:  # moved or deleted since the run: say so rather than fail the report
            found[f"data: {corpus}"] = "unavailable (corpus not found)"
    try:
        model_dir = resolve_model_dir(run_dir)
        manifest = json.loads((model_dir / "manifest.json").read_text())
    except (ScratchError, OSError, json.JSONDecodeError):
        return found
    if "tokenizer_fingerprint" in manifest:
        found[f"tokenizer ({model_dir.name}/tokenizer)"] = manifest["tokenizer_fingerprint"]
    for name, digest in manifest.get("files", {}).items():
        if name.endswith(".safetensors") and isinstance(digest, str):
            found[f"weights ({model_dir.name}/{name})"] = digest
    return found


# --- rendering ---------------------------------------------------------------------------------------


def _blocks(run_dir: Path, records: list[dict], plots) -> list[tuple]:
    run_dir = Path(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    blocks: list[tuple] = [("h1", f"Report: {run_dir.resolve().name}")]
    last = progress(records)
    summary = [["steps", fmt_value(last.get("step", "-"))]]
    if last:
        summary += [["tokens", f"{last.get('tokens', 0):,}"], ["time", f"{last.get('elapsed_s', 0):.1f} s"]]
    if train:
        summary.append(
            ["final train loss", f"{fmt_value(train[-1].get('loss'))} (step {train[-1].get('step')})"]
        )
    if evals:
        best = min(evals, key=lambda r: r.get("val_loss", float("inf")))
        summary += [
            ["final val loss", fmt_value(evals[-1].get("val_loss"))],
            ["final val bpb", fmt_value(evals[-1].get("val_bpb"))],
            ["best val loss", f"{fmt_value(best.get('val_loss'))} (step {best.get('step')})"],
        ]
    blocks += [("table", ["figure", "value"], summary)]
    throughput = throughput_rows(run_dir, records)
    if throughput:
        blocks += [
            ("h2", "Throughput: measured and planned"),
            ("table", ["", "measured", "planner"], throughput),
        ]
    blocks += [("h2", "Curves")] + [("image", caption, path) for caption, path in plots]
    if not plots:
        blocks.append(("p", "No training records to plot yet."))
    blocks.append(("h2", "Evaluations"))
    rows = [[str(r.get("step")), fmt_value(r.get("val_loss")), fmt_value(r.get("val_bpb"))] for r in evals]
    if rows:
        blocks.append(("table", ["step", "val loss", "val bpb"], rows))
    bench = benchmark_rows(records)
    if bench:
        blocks.append(("h3", "Benchmarks (scratchlm eval --run)"))
        blocks.append(("table", ["time", "step", "task", "figures"], bench))
    if not rows and not bench:
        blocks.append(("p", "No evaluations recorded yet."))
    samples = [r for r in evals if r.get("sample")]
    if samples:
        blocks.append(("h2", "Samples"))
        picked = (
            samples if len(samples) <= MAX_SAMPLES else [samples[0], samples[len(samples) // 2], samples[-1]]
        )
        for r in picked:
            blocks += [("p", f"Step {r.get('step')}:"), ("code", r["sample"])]
    config = run_dir / "config.yaml"
    if config.is_file():
        blocks += [("h2", "Configuration"), ("code", config.read_text(encoding="utf-8"))]
    blocks += [("h2", "Environment (where this report was made)")]
    blocks.append(("table", ["", ""], [[k, str(v)] for k, v in environment().items()]))
    prints = fingerprints(run_dir)
    if prints:
        blocks += [("h2", "Fingerprints"), ("table", ["what", "sha256"], [[k, v] for k, v in prints.items()])]
    return blocks


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[tuple], base: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "code":
            out.append("```\n" + rest[0].rstrip("\n") + "\n```")
        elif kind == "image":
            out.append(f"![{rest[0]}]({os.path.relpath(rest[1], base)})")
        elif kind == "table":
            header, rows = rest
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0}"
    "td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
    "pre{background:#f5f5f5;padding:.8rem;overflow-x:auto}img{max-width:100%}"
)


def to_html(blocks: list[tuple], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out.append(f"<style>{STYLE}</style></head><body>")
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "code":
            out.append(f"<pre>{html.escape(rest[0])}</pre>")
        elif kind == "image":
            data = base64.b64encode(Path(rest[1]).read_bytes()).decode("ascii")
            out.append(
                f"<figure><img alt='{html.escape(rest[0])}' src='data:image/png;base64,{data}'></figure>"
            )
        elif kind == "table":
            header, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write `report.md`, `report.html` and the plots into `out_dir` (default RUN_DIR/report).

    Everything is made in a temporary folder first and moved into `out_dir` only once complete
    (`fileio.staged_dir`): a failure leaves `out_dir` as it was (absent, or the previous report).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScratchError(f"run folder not found: {run_dir}")
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    records = read_records(run_dir)
    new_figure((1, 1))  # no matplotlib: say so before anything is written
    with staged_dir(out_dir) as tmp:
        plots = training_plots(records, tmp)
        blocks = _blocks(run_dir, records, plots)
        (tmp / "report.md").write_text(to_markdown(blocks, tmp), encoding="utf-8")
        html_page = to_html(blocks, f"scratchlm report: {run_dir.resolve().name}")
        (tmp / "report.html").write_text(html_page, encoding="utf-8")
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}


def run_corpus(run_dir: str | Path) -> str | None:
    """The corpus a run trained on (its config.yaml's data.corpus), if recorded."""
    return (RunDir(run_dir).read_config().get("data") or {}).get("corpus")


def run_heldout(run_dir: str | Path) -> list[str]:
    """The documents a run held out as its validation split (data.heldout), if any."""
    return list((RunDir(run_dir).read_config().get("data") or {}).get("heldout") or [])


def append_benchmark(
    run_dir: str | Path, results: dict[str, dict], *, ckpt: str | Path | None = None
) -> dict:
    """Append one `{"kind": "benchmark", ...}` record to RUN_DIR/metrics.jsonl and return it.

    The step is the evaluated model's (recorded in its manifest, or its `step_N` folder name), else the
    run's last logged training step.
    """
    import datetime

    run_dir = Path(run_dir)
    if not RunDir(run_dir).metrics_path.is_file():
        raise ScratchError(f"--run {run_dir}: no metrics.jsonl there; give the folder of a training run")
    records = read_records(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    step = train[-1].get("step") if train else None
    tokens = train[-1].get("tokens") if train else None
    if ckpt is not None:
        model_dir = resolve_model_dir(ckpt)
        try:  # training records the step in the model folder's manifest; metrics may log less often
            extra = json.loads((model_dir / "manifest.json").read_text()).get("extra") or {}
        except (OSError, json.JSONDecodeError):
            extra = {}
        if (named := step_of(model_dir)) is not None or "step" in extra:
            step = named if named is not None else int(extra["step"])
            tokens = extra.get(
                "tokens", next((r.get("tokens") for r in train if r.get("step") == step), None)
            )
    record = {
        "kind": "benchmark",
        "step": step,
        "tokens": tokens,
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "ckpt": str(ckpt) if ckpt is not None else None,
        "results": results,
    }
    RunDir(run_dir).append_record(record)
    return record
