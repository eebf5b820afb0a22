"""Multi-node launch: two torchrun "nodes" on 127.0.0.1 with two processes each (c10d rendezvous, the
command line of docs/multi-node.md) train what one process trains, under FSDP across all four ranks.

Nothing in scratchlm knows about nodes: torchrun gives every worker RANK / LOCAL_RANK / WORLD_SIZE and
the rendezvous address, and the process group spans the nodes. The global batch of 8 gives each of the
4 ranks 2 rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from support.training import ROOT, eval_losses, tiny_corpus, tiny_overrides, train_losses

from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir

MODEL = "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 16, dropout: 0.0}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_two_processes_match_one_process(tmp_path_factory, tmp_path):
    corpus = tiny_corpus(tmp_path_factory)
    overrides = tiny_overrides(corpus, steps=6, model=MODEL)
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    pretrain(load_pretrain_config(None, overrides), single, say=lambda *_: None)

    port = free_port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
              "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test"]  # fmt: skip
    args = ["-m", "scratchlm", "pretrain", "--out", str(nodes), "--set", "parallel=fsdp"]
    args += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            launch + [f"--node-rank={n}"] + args,
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for n in (0, 1)
    ]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]

    one, four = train_losses(single), train_losses(nodes)
    assert [s for s, _ in four] == list(range(1, 7))  # rank 0 alone wrote the log
    for (step, a), (_, b) in zip(one, four):
        assert b == pytest.approx(a, abs=1e-5), step
    assert one[-1][1] < one[0][1]
    for (step, a), (_, b) in zip(eval_losses(single), eval_losses(nodes)):
        assert b == pytest.approx(a, abs=1e-5), step
    step_4 = RunDir(nodes).checkpoint_path(4)  # every rank of both nodes wrote its shards
    assert sorted(p.name for p in (step_4 / "dcp").glob("*.distcp")) == [f"__{r}_0.distcp" for r in range(4)]
