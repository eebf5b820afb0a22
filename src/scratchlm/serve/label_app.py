"""The label page's server: hands out prompts with K sampled answers, records a person's rankings.

    queue = LabelQueue(prompts, "prefs.jsonl", sample=functools.partial(sample_answers, model, tokenizer,
                       k=4, sampling=SamplingConfig(max_new_tokens=64, seed=0), batch_size=1), k=4)
    uvicorn.run(create_app(queue), host="127.0.0.1", port=8000)

    GET  /                    the page (label_page.html)
    GET  /api/next?tab=ID     this tab's prompt and answers, or {"state": "done" | "busy"}
    POST /api/rank            {"tab", "index", "order": answer indices, best first} -> appended to the file
    POST /api/undo            {"tab"} -> the file's last ranking removed; its prompt is this tab's again

The file is the only record: each ranking is appended and fsynced (`append_record`) before the page hears
"ok", so a crash loses at most the ranking being written, and a restart resumes where the file stops
(prompts it holds are skipped; a torn last line is dropped first). A prompt is lent to one tab at a time
(a lease, renewed whenever the tab asks, lapsing after `lease_seconds` so a closed tab frees it), and a
ranking of a prompt the file already holds is refused: under one lock, so two tabs never write one prompt.
Each prompt's answers are sampled once, when first shown, and kept, so a reload shows the same answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from scratchlm.align.preferences import (
    append_record,
    parse_record,
    read_records,
    remove_last_record,
    repair_tail,
)
from scratchlm.errors import ScratchError

Message = dict[str, str]
Sampler = Callable[..., list[list[str]]]  # sample(prompts, start=position of prompts[0]) -> answers
MAX_K = 9  # the page ranks with the keys 1-9


class Refused(ScratchError):
    """A request that conflicts with what is recorded (HTTP 409): ranked already, or lent to another tab."""


def check_page_k(k: int) -> None:
    if not 2 <= k <= MAX_K:
        raise ScratchError(
            f"--k {k}: the label page ranks 2 to {MAX_K} answers per prompt; give --k 2-{MAX_K}"
        )


def prompt_key(messages: Sequence[Message]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


class LabelQueue:
    """The prompts, what the file holds, and which tab holds which prompt; every method takes the lock."""

    def __init__(
        self,
        prompts: Sequence[Sequence[Message]],
        out: str | Path,
        sample: Sampler,
        k: int,
        *,
        lease_seconds: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        check_page_k(k)
        self.out, self.k = Path(out), k
        self.prompts: list[list[Message]] = []
        self._index: dict[str, int] = {}
        for messages in prompts:  # a prompt given twice is one prompt: it is ranked once
            key = prompt_key(messages)
            if key not in self._index:
                self._index[key] = len(self.prompts)
                self.prompts.append([{"role": m["role"], "content": m["content"]} for m in messages])
        self.duplicates = len(prompts) - len(self.prompts)
        self.repaired = repair_tail(self.out)  # a torn last line was never acknowledged: drop it
        records = read_records(self.out) if self.out.exists() else []
        self._ranked = {prompt_key(parse_record(r, f"{self.out}:{n}")[0]) for n, r in records}
        self._sample, self._lease_seconds, self._clock = sample, lease_seconds, clock
        self._answers: dict[int, list[str]] = {}
        self._leases: dict[int, tuple[str, float]] = {}  # prompt index -> (tab, when it last asked)
        self._lock = threading.Lock()

    # ---- the three requests ------------------------------------------------------------------------

    def next(self, tab: str) -> dict:
        """The prompt this tab holds, else the first one nobody holds (lent to this tab), else why none."""
        with self._lock:
            now = self._clock()
            held = self._held_by(tab)
            if held is None:
                held = next((i for i in range(len(self.prompts)) if self._free(i, tab, now)), None)
            if held is None:
                left = len(self.prompts) - self._ranked_count()
                if left == 0:
                    return self._progress(state="done", message=f"all {len(self.prompts)} prompts are ranked")
                return self._progress(
                    state="busy", message=f"{left} prompt{'s' * (left != 1)} left, open in other tabs"
                )
            self._lend(held, tab, now)
            if held not in self._answers:
                answers = self._sample([self.prompts[held]], start=held)[0]
                assert len(answers) == self.k, (len(answers), self.k)
                self._answers[held] = list(answers)
            return self._progress(
                state="prompt", index=held, prompt=self.prompts[held], answers=self._answers[held]
            )

    def rank(self, tab: str, index: int, order: Sequence[int]) -> dict:
        """Append the ranking `order` (answer indices, best first) of prompt `index`, shown to `tab`."""
        with self._lock:
            if not 0 <= index < len(self.prompts):
                raise ScratchError(f"prompt {index} does not exist: there are {len(self.prompts)} prompts")
            if prompt_key(self.prompts[index]) in self._ranked:
                raise Refused(
                    f"prompt {index} is already ranked (in another tab?); this ranking is not saved"
                )
            lease = self._leases.get(index)
            if lease and lease[0] != tab and self._clock() - lease[1] < self._lease_seconds:
                raise Refused(f"prompt {index} is open in another tab; this ranking is not saved")
            if index not in self._answers:
                raise Refused(f"prompt {index} has not been shown yet; ask /api/next for a prompt")
            if sorted(order) != list(range(self.k)):
                raise ScratchError(
                    f"order {list(order)}: list the answers 0-{self.k - 1} once each, best first"
                )
            answers = self._answers[index]
            record = {
                "prompt": self.prompts[index],
                "responses": [answers[i] for i in order],
                "annotator": "human",
            }
            append_record(self.out, record)  # fsynced before the page hears "ok"
            self._ranked.add(prompt_key(self.prompts[index]))
            self._leases.pop(index, None)
            return self._progress(state="ranked", index=index)

    def undo(self, tab: str) -> dict:
        """Remove the file's last ranking (whichever tab made it); its prompt becomes this tab's to redo."""
        with self._lock:
            record = remove_last_record(self.out)
            if record is None:
                raise Refused("nothing to undo: the file holds no rankings")
            key = prompt_key(parse_record(record, f"{self.out}: the undone record")[0])
            self._ranked.discard(key)
            index = self._index.get(key)
            if index is None:
                return self._progress(
                    state="undone", message="removed the last ranking (not of these prompts)"
                )
            self._lend(index, tab, self._clock())
            return self._progress(state="undone", index=index, message=f"prompt {index} is back to rank")

    def progress(self) -> tuple[int, int]:
        """(prompts ranked, prompts)."""
        with self._lock:
            return self._ranked_count(), len(self.prompts)

    # ---- under the lock ----------------------------------------------------------------------------

    def _ranked_count(self) -> int:
        return sum(key in self._ranked for key in self._index)

    def _progress(self, **fields) -> dict:
        return {"ranked": self._ranked_count(), "total": len(self.prompts), "k": self.k, **fields}

    def _held_by(self, tab: str) -> int | None:
        for index, (holder, _) in self._leases.items():
            if holder == tab and prompt_key(self.prompts[index]) not in self._ranked:
                return index
        return None

    def _free(self, index: int, tab: str, now: float) -> bool:
        if prompt_key(self.prompts[index]) in self._ranked:
            return False
        lease = self._leases.get(index)
        return lease is None or lease[0] == tab or now - lease[1] >= self._lease_seconds

    def _lend(self, index: int, tab: str, now: float) -> None:
        """`index` is `tab`'s, and the only prompt it holds."""
        for other in [i for i, (holder, _) in self._leases.items() if holder == tab and i != index]:
            del self._leases[other]
        self._leases[index] = (tab, now)


class _Tab(BaseModel):
    tab: str = Field(min_length=1, max_length=100)


class _Ranking(_Tab):
    index: int
    order: list[int]


def create_app(queue: LabelQueue) -> FastAPI:
    """The label page and its API over `queue` (see the module docstring)."""
    app = FastAPI(title="scratchlm label", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files(__package__).joinpath("label_page.html").read_text(encoding="utf-8")

    @app.exception_handler(ScratchError)
    def _refused(request: Request, error: ScratchError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409 if isinstance(error, Refused) else 400)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/next")
    def next_prompt(tab: Annotated[str, Query(min_length=1, max_length=100)]) -> dict:
        return queue.next(tab)

    @app.post("/api/rank")
    def rank(ranking: _Ranking) -> dict:
        return queue.rank(ranking.tab, ranking.index, ranking.order)

    @app.post("/api/undo")
    def undo(body: _Tab) -> dict:
        return queue.undo(body.tab)

    return app
