"""Where does a training step of the recipe's model spend its time? torch.profiler over a few steps.

python experiments/profile_step.py [key=value model overrides ...]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from scratchlm.model import ModelConfig, Transformer
from scratchlm.train.optim import OptimConfig, build_optimizer

torch.set_num_threads(1)
over = dict(a.split("=", 1) for a in sys.argv[1:])
batch = int(over.pop("batch", 48))
kw = dict(
    vocab_size=65, context_length=64, n_layers=4, d_model=128, n_heads=4, mlp="relu2", tie_embeddings=False
)
for k, v in over.items():
    kw[k] = type(kw.get(k, 1))(v) if k in kw else int(v)
cfg = ModelConfig(**kw)
model = Transformer(cfg)
opt = build_optimizer(model, OptimConfig())
x = torch.randint(0, 65, (batch, cfg.context_length + 1))


def step():
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=28))
