"""Optimizers: Newton-Schulz orthogonalization, parameter roles, AdamW twin, state round trip, convergence."""

from __future__ import annotations

import copy

import pytest
import torch
from support.training import tiny_corpus, tiny_overrides
from torch import nn

from scratchlm.errors import ScratchError
from scratchlm.train.optim import MuonAdamW, OptimConfig, build_optimizer, newton_schulz, parameter_roles


class TinyLM(nn.Module):
    """A stand-in language model: embedding, norm, two hidden matrices, head (optionally tied)."""

    def __init__(self, vocab: int = 11, width: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"vocab_size": vocab})()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width, bias=True)
        self.down = nn.Linear(4 * width, width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, D)
        x = x + self.down(torch.relu(self.up(self.norm(x))))
        return self.head(x)  # (B, T, V)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronization (and spin-waits on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 11, (4, 9), generator=gen)
        loss = _lm_loss(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48), (3, 16, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_is_near_the_polar_factor(shape, dtype):
    torch.manual_seed(0)
    g = torch.randn(*shape)
    if shape[-1] == shape[-2]:  # keep the square case well conditioned, as in the quintic's design range
        g = g + 3 * torch.eye(shape[-1])
    out = newton_schulz(g, steps=5, dtype=dtype)
    assert out.shape == g.shape and out.dtype == g.dtype
    sv = torch.linalg.svdvals(out.double())
    assert sv.min() > 0.6 and sv.max() < 1.25, (sv.min(), sv.max())
    # Slow, exact twin: U V^T from the SVD. The quintic does not converge exactly, but points the same way.
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = u @ vh
    cos = (out.double() * polar).sum((-2, -1)) / (out.double().norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cos > 0.97).all(), cos


def test_more_newton_schulz_steps_do_not_leave_the_band():
    torch.manual_seed(1)
    g = torch.randn(16, 40)
    sv = torch.linalg.svdvals(newton_schulz(g, steps=12, dtype=torch.float32))
    assert sv.min() > 0.65 and sv.max() < 1.25


def test_roles_split_embeddings_head_scalars_and_matrices():
    model = TinyLM()
    roles = parameter_roles(model)
    assert roles["embed"] == [model.embed.weight]
    assert roles["head"] == [model.head.weight]
    assert {id(p) for p in roles["scalar"]} == {id(model.norm.weight), id(model.norm.bias), id(model.up.bias)}
    assert {id(p) for p in roles["matrix"]} == {id(model.up.weight), id(model.down.weight)}
    total = sum(len(v) for v in roles.values())
    assert total == len(list(model.parameters()))


def test_tied_head_counts_once_as_embedding():
    model = TinyLM(tied=True)
    roles = parameter_roles(model)
    assert roles["head"] == [] and roles["embed"] == [model.embed.weight]
    opt = build_optimizer(model, OptimConfig(name="muon"))
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_groups_carry_initial_lr_and_decay_matrices_only(name):
    cfg = OptimConfig(name=name, lr=1e-3, head_lr=2e-3, muon_lr=0.05, weight_decay=0.1)
    opt = build_optimizer(TinyLM(), cfg)
    by_role = {g["role"]: g for g in opt.param_groups}
    assert set(by_role) == {"embed", "head", "scalar", "matrix"}
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"]
    assert by_role["scalar"]["weight_decay"] == 0.0
    assert by_role["embed"]["weight_decay"] == 0.1 and by_role["head"]["lr"] == 2e-3
    if name == "muon":
        assert isinstance(opt, MuonAdamW) and by_role["matrix"]["kind"] == "muon"
        assert by_role["matrix"]["lr"] == 0.05
    else:
        assert isinstance(opt, torch.optim.AdamW) and by_role["matrix"]["lr"] == 1e-3


def test_hand_written_adamw_matches_torch_adamw():
    """MuonAdamW's AdamW groups are the slow, readable twin of torch's AdamW: same numbers."""
    torch.manual_seed(0)
    a = TinyLM()
    b = copy.deepcopy(a)
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    ours = MuonAdamW([{"params": list(a.parameters()), "kind": "adamw", **kw}])
    ref = torch.optim.AdamW(b.parameters(), foreach=False, **kw)
    _train(a, ours, 5)
    _train(b, ref, 5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_muon_step_has_the_promised_spectral_size():
    """One Muon step from zero momentum moves a tall matrix by lr * sqrt(rows/cols) in spectral norm."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64, 16))
    w.grad = torch.randn(64, 16)
    before = w.detach().clone()
    lr = 0.1
    group = {"params": [w], "kind": "muon", "lr": lr, "momentum": 0.0, "nesterov": False}
    opt = MuonAdamW([{**group, "ns_steps": 5, "ns_dtype": "float32", "weight_decay": 0.0}])
    opt.step()
    step_norm = torch.linalg.matrix_norm(w.detach() - before, ord=2)
    assert 0.7 * lr * 2 < step_norm < 1.25 * lr * 2  # sqrt(64 / 16) = 2


def test_batched_muon_matches_one_matrix_at_a_time():
    """The shape-batched step equals the plain per-matrix formula (momentum, Nesterov, NS, scale, decay)."""
    torch.manual_seed(0)
    shapes = [(16, 16), (16, 16), (64, 16), (16, 64), (24, 16)]
    params = [nn.Parameter(torch.randn(*s)) for s in shapes]
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    lr, mom, wd = 0.05, 0.9, 0.1
    group = {"kind": "muon", "lr": lr, "momentum": mom, "nesterov": True, "ns_steps": 5, "weight_decay": wd}
    opt = MuonAdamW([{"params": params, "ns_dtype": "float32", **group}])
    for _ in range(3):
        grads = [torch.randn(*s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = mom * bufs[i] + (1 - mom) * g
            update = (1 - mom) * g + mom * bufs[i]
            scale = max(1.0, shapes[i][0] / shapes[i][1]) ** 0.5
            ref[i] = ref[i] * (1 - lr * wd) - lr * scale * newton_schulz(update, 5, torch.float32)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_state_dict_round_trip_continues_identically(name):
    cfg = OptimConfig(name=name, lr=3e-3, muon_lr=0.02)
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, cfg)
    _train(model, opt, 3, seed=1)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    expected = _train(model, opt, 3, seed=2)

    fresh = TinyLM()
    fresh.load_state_dict(saved_model)
    fresh_opt = build_optimizer(fresh, cfg)
    fresh_opt.load_state_dict(saved_opt)
    assert _train(fresh, fresh_opt, 3, seed=2) == expected
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_tiny_regression_converges(name):
    """A 2-layer network fits a fixed random linear map: the held-out loss falls 8x in 80 steps.

    The learning rates decay linearly to 0 from each group's `initial_lr`, as a scheduler would set them.
    """
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 8))
    cfg = OptimConfig(name=name, lr=3e-2, muon_lr=0.1, weight_decay=0.0, muon_ns_dtype="float32")
    opt = build_optimizer(net, cfg)
    x_train, x_eval = torch.randn(256, 8), torch.randn(256, 8)

    def loss_on(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(net(x), x @ target)

    with torch.no_grad():
        start = loss_on(x_eval).item()
    steps = 80
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * (1 - step / steps)
        loss = loss_on(x_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert loss_on(x_eval).item() < start / 8


def test_bad_settings_are_user_errors():
    with pytest.raises(ScratchError, match="optim.name"):
        OptimConfig(name="sgd")
    with pytest.raises(ScratchError, match="optim.lr"):
        OptimConfig(lr=0.0)
    with pytest.raises(ScratchError, match="muon_ns_dtype"):
        OptimConfig(muon_ns_dtype="float16")
    with pytest.raises(ScratchError, match="muon_momentum_start"):
        OptimConfig(muon_momentum_start=1.0)


def test_muon_momentum_warmup_ramps_linearly_then_holds():
    cfg = OptimConfig(muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup=4)
    assert [round(cfg.muon_momentum_at(s), 4) for s in range(6)] == [0.85, 0.875, 0.9, 0.925, 0.95, 0.95]
    assert OptimConfig(muon_momentum=0.9).muon_momentum_at(0) == 0.9  # off by default


def test_the_loop_gives_muon_the_warmed_up_momentum(tmp_path, monkeypatch):
    from scratchlm.train import load_pretrain_config, pretrain

    class Factory:  # tiny_corpus wants a tmp_path_factory
        @staticmethod
        def mktemp(name):
            (tmp_path / name).mkdir()
            return tmp_path / name

    seen, real_step = [], MuonAdamW.step

    def spy(self, *args, **kwargs):
        seen.append([g["momentum"] for g in self.param_groups if g.get("kind") == "muon"][0])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MuonAdamW, "step", spy)
    settings = {"optim.muon_momentum_warmup": 2, "optim.muon_momentum_start": 0.5, "optim.muon_momentum": 0.9}
    cfg = load_pretrain_config(None, tiny_overrides(tiny_corpus(Factory), steps=4, **settings))
    pretrain(cfg, tmp_path / "run", say=lambda *_: None)
    assert seen == pytest.approx([0.5, 0.7, 0.9, 0.9])
