"""lm-evaluation-harness adapter: any harness task runs on a scratchlm model folder.

Importing this module registers the model name "scratchlm" with `lm_eval` (an optional extra:
`pip install scratchlm[lm-eval]`). The harness's own command line does not import scratchlm, so run it
through this module, which registers and then hands over to the harness unchanged:

    python -m scratchlm.eval.harness run --model scratchlm --model_args ckpt=runs/demo/final \\
        --tasks hellaswag --include_path my_tasks/ --batch_size 32

Scoring goes through the same functions as `scratchlm eval` (`encode_pair`, `score_continuations`,
`rolling_windows`), so a figure from the harness and from scratchlm's own tasks agree exactly; the test
suite checks that on a local task.
"""

from __future__ import annotations

import sys

from scratchlm.errors import ScratchError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ScratchError(
        "lm-evaluation-harness is not installed; install it with `pip install 'scratchlm[lm-eval]'`"
    ) from e

from scratchlm.eval.generation import greedy_until
from scratchlm.eval.scoring import (
    context_length,
    encode_pair,
    model_device,
    prefix_token,
    rolling_windows,
    score_continuations,
)


def _load(ckpt: str, device: str | None):
    import torch

    from scratchlm.eval.checkpoint import load_checkpoint

    if device and device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"  # the harness's CLI defaults to --device cuda:0, even on a machine without one
    model, tokenizer, _ = load_checkpoint(ckpt, device=device or "auto")  # auto: CUDA when present
    return model, tokenizer


@register_model("scratchlm")
class ScratchLM(LM):
    """`--model scratchlm --model_args ckpt=DIR[,device=cuda][,max_gen_toks=N]`. Greedy decoding only."""

    def __init__(
        self,
        ckpt: str | None = None,
        device: str | None = None,
        batch_size: int | str = 32,
        max_gen_toks: int = 256,
        model=None,
        tokenizer=None,
        **_ignored,  # harness-wide options (max_batch_size, ...) that do not apply here
    ):
        super().__init__()
        if model is None:
            if ckpt is None:
                raise ScratchError("the scratchlm harness model needs --model_args ckpt=MODEL_DIR")
            model, tokenizer = _load(ckpt, device)
        self.model, self.tokenizer = model, tokenizer
        # "auto" (the harness's batch-size search) falls back to our own memory-bounded batching.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        self.max_gen_toks = int(max_gen_toks)
        self._device = model_device(model)

    @property
    def tokenizer_name(self) -> str:
        fingerprint = getattr(self.tokenizer, "fingerprint", None)
        return f"scratchlm-{fingerprint()[:12]}" if fingerprint else "scratchlm"

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *req.args) for req in requests]
        results = score_continuations(
            self.model, pairs, batch_size=self.batch_size, progress=None if disable_tqdm else "loglikelihood"
        )
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-string log-likelihood after the end-of-text token, in consecutive context windows."""
        prefix = prefix_token(self.tokenizer)
        windows, owner = [], []
        for i, req in enumerate(requests):
            ids = self.tokenizer.encode_ordinary(req.args[0])
            tokens = ids if prefix is None else [prefix, *ids]
            doc_windows = rolling_windows(tokens, context_length(self.model))
            windows += doc_windows
            owner += [i] * len(doc_windows)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(
            owner,
            score_continuations(
                self.model, windows, batch_size=self.batch_size, progress=None if disable_tqdm else "rolling"
            ),
        ):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            eot = prefix_token(self.tokenizer)
            if eot is not None:
                until.append(self.tokenizer.decode([eot]))
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            (text,) = greedy_until(self.model, self.tokenizer, [context], until, max_new_tokens=max_new)
            self.cache_hook.add_partial("generate_until", req.args, text)
            outputs.append(text)
        return outputs


def main() -> None:
    """`python -m scratchlm.eval.harness ...`: lm_eval's command line with "scratchlm" registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
