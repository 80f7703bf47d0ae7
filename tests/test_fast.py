"""The fast path: resampling as matrices, attention written out, the shared loop's NaN guard and learning-rate
plumbing, and (on a CUDA machine) captured CUDA-graph steps that give the same losses as eager ones."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import load_algorithm

from shared import training
from shared.utils import RunError

mage = load_algorithm("mage")
bc = load_algorithm("bc")
iql = load_algorithm("iql")
dt = load_algorithm("dt")
diffuser = load_algorithm("diffuser")

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("n_in,n_out", [(1, 32), (2, 32), (4, 32), (8, 32), (16, 32), (3, 17), (5, 64)])
def test_resample_matrices_equal_f_interpolate(n_in, n_out):
    x = torch.randn(7, 5, n_in, dtype=torch.float64)
    up = mage.resample_matrix(n_in, n_out, "linear").double()
    assert torch.allclose(x @ up, F.interpolate(x, size=n_out, mode="linear", align_corners=False), atol=1e-6)
    y = torch.randn(7, 5, n_out, dtype=torch.float64)
    down = mage.resample_matrix(n_out, n_in, "area").double()
    assert torch.allclose(y @ down, F.interpolate(y, size=n_in, mode="area"), atol=1e-6)


def test_decoder_upsampling_equals_nearest_interpolation():
    h = torch.randn(3, 4, 6)
    assert torch.equal(h.unsqueeze(-1).expand(*h.shape, 2).flatten(-2), F.interpolate(h, scale_factor=2,
                                                                                     mode="nearest"))


@pytest.mark.parametrize("queries", [63, 8, 1])
def test_written_out_attention_equals_sdpa(queries):
    """MAGE's attention (block-causal teacher forcing, and a generation step's new tokens against the cache)."""
    q = torch.randn(3, 8, queries, 32, dtype=torch.float64)
    k, v = torch.randn(2, 3, 8, 63, 32, dtype=torch.float64)
    level = torch.cat([torch.full((n,), i) for i, n in enumerate([1, 2, 4, 8, 16, 32])])
    mask = (level[:, None] >= level[None, :])[-queries:] if queries == 63 else None
    assert torch.allclose(mage.attention(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, mask),
                          atol=1e-10)


def test_set_lr_and_load_optimizer_keep_a_tensor_rate_in_place():
    p = torch.nn.Parameter(torch.zeros(3))
    eager = training.make_optimizer([p], 1e-3, "adamw")
    training.set_lr(eager, 5e-4)
    assert eager.param_groups[0]["lr"] == 5e-4
    # what make_optimizer(captured=True) builds on CUDA: the rate lives in a tensor the graph reads
    rate = torch.tensor(1e-3)
    tensor_lr = torch.optim.AdamW([p], lr=rate, foreach=False)
    training.set_lr(tensor_lr, 2e-4)
    assert tensor_lr.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(2e-4)
    p.grad = torch.ones(3)
    eager.step()
    training.load_optimizer(tensor_lr, eager.state_dict())  # an eager run's checkpoint: a float rate
    assert tensor_lr.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(5e-4)
    training.load_optimizer(eager, tensor_lr.state_dict())
    assert isinstance(eager.param_groups[0]["lr"], float)
    # a captured run's checkpoint (capturable, fused) resumed eagerly keeps the eager optimiser's own flags
    saved = eager.state_dict()
    saved["param_groups"][0].update(capturable=True, fused=True)
    flags = {k: eager.param_groups[0][k] for k in ("capturable", "fused", "foreach")}
    training.load_optimizer(eager, saved)
    assert {k: eager.param_groups[0][k] for k in flags} == flags
    eager.step()
    with pytest.raises(RunError, match="CUDA"):
        training.make_optimizer([p], 1e-3, "adamw", captured=True)


class _Log:
    def __init__(self):
        self.rows = []

    def log(self, metrics, step):
        self.rows.append((step, metrics))


def test_loop_stops_at_the_first_nan_before_any_checkpoint_holds_it(tmp_path):
    config = SimpleNamespace(log_every=5, checkpoint_every=4, eval_every=0, eval_episodes_during=1)
    saved = []

    def begin():
        def step(i):
            return {"train/loss": torch.tensor(float("nan") if i == 5 else 1.0)}  # the 6th step goes bad
        return step

    def checkpoint():
        saved.append(len(saved))
        return {}

    stages = [training.Stage("train", 100, begin)]
    with pytest.raises(RunError, match=r"loss became nan or inf at step 6; stopped, the last good checkpoint is "
                                       r".*checkpoint_000000004\.pt"):
        training.train_loop("t", config, tmp_path, _Log(), stages, 0, checkpoint)
    assert saved == [0]  # step 4 only: the checkpoint of step 8 would have held the NaN
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_000000004.pt"]


def test_loop_resumes_its_clock_and_runs_every_stage_once(tmp_path):
    config = SimpleNamespace(log_every=2, checkpoint_every=100, eval_every=0, eval_episodes_during=1)
    seen = []

    def stage(name, end):
        def begin():
            return lambda i: (seen.append((name, i)), {"train/loss": torch.tensor(0.0)})[1]
        return training.Stage(name, end, begin)

    log = _Log()
    step, wall = training.train_loop("t", config, tmp_path, log, [stage("a", 3), stage("b", 3), stage("c", 6)], 2,
                                     lambda: {}, elapsed=100.0)
    assert step == 6 and wall >= 100.0
    assert seen == [("a", 2), ("c", 3), ("c", 4), ("c", 5)]  # "b" has no steps; resumed at step 2
    assert [s for s, _ in log.rows] == [4, 6] and "train/steps_per_s" in log.rows[0][1]
    state = torch.load(tmp_path / "checkpoint_000000006.pt", weights_only=False)
    assert state["stage"] == "c" and state["train_wall_s"] >= 100.0


# ----------------------------------------------------------------------------- CUDA: captured == eager
SMALL_MAGE = dict(horizon=16, patch=2, scales=[1, 2, 4, 8], codebook_size=64, code_dim=8, ae_channels=32,
                  ae_blocks=1, d_model=64, n_layers=2, n_heads=4, dropout=0.0, batch_size=32, warmup_steps=5,
                  ae_steps=12, tf_steps=12, e2e_steps=12, bf16=False, dataset_size=30_000, task="maze2d-umaze")


def _mage_losses(compile: bool, **overrides) -> list[float]:
    device = torch.device("cuda")
    config = mage.TrainConfig(**{**SMALL_MAGE, **overrides}, compile=compile, device="cuda")
    torch.manual_seed(0)
    data = mage.load_data(config, device)
    model = mage.MAGE(config, data.obs_dim, data.cond_dim, data.act_dim, data.obs_norm).to(device)
    stages, _ = mage.training_stages(config, data, model, device)
    losses, i = [], 0
    for stage in stages:
        step = stage.begin()
        while i < stage.end:
            losses.append(float(step(i)["train/loss"]))
            i += 1
    return losses


TINY = dict(task="maze2d-umaze", dataset_size=30_000, bf16=False, device="cuda", batch_size=64)


def _one_stage_losses(algo: str, compile: bool) -> list[float]:
    """40 steps of a baseline's only stage through its training_stages, from seed 0 ("iql+inductor": the captured
    step with its losses fused by inductor)."""
    algo, _, fuse = algo.partition("+")
    mod, device = {"bc": bc, "iql": iql, "dt": dt, "diffuser": diffuser}[algo], torch.device("cuda")
    steps = {"diffuser": dict(steps=40, horizon=32, dim=16, n_diffusion_steps=20, ema_every=2, ema_start=4)}
    config = mod.TrainConfig(**TINY, compile=compile, **steps.get(algo, dict(steps=40)),
                             **(dict(inductor=True) if fuse else {}))
    torch.manual_seed(0)
    data = mod.load_data(config, device)
    if algo == "bc":
        model = bc.Actor(data.in_dim, data.act_dim, 64, 2, 0.0, "mse").to(device)
    elif algo == "iql":
        model = iql.IQL(config, data.in_dim, data.act_dim).to(device)
    elif algo == "dt":
        model = dt.DecisionTransformer(config, data.obs_dim, data.act_dim, data.goal_dim, data.max_timestep).to(device)
    else:
        model = diffuser.Diffuser(config, data.obs_dim, data.act_dim).to(device)
    extra = (training.EMA(model, config.ema_decay),) if algo == "diffuser" else ()
    stages, _ = mod.training_stages(config, data, model, *extra, device)
    step = stages[0].begin()
    losses = []
    for i in range(stages[0].end):
        losses.append(float(step(i)["train/loss"]))
        if stages[0].after_step is not None:
            stages[0].after_step(i + 1)
    return losses


MAGE_VARIANTS = {"mage": {}, "mage-relabel": dict(goal_relabel=0.5, return_condition=True),
                 # the heading-frame plan target (antmaze only): two 1,000-step antmaze-umaze walks
                 "mage-track": dict(task="antmaze-umaze", dataset_size=2000, plan_dims=2, goal_relabel=0.5,
                                    return_condition=True, head_track=8, head_condition="track")}


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("algo", [*MAGE_VARIANTS, "bc", "iql", "iql+inductor", "dt", "diffuser"])
def test_captured_steps_give_the_eager_losses(algo):
    losses = ((lambda compile: _mage_losses(compile, **MAGE_VARIANTS[algo])) if algo in MAGE_VARIANTS
              else (lambda compile: _one_stage_losses(algo, compile)))
    eager, fast = losses(False), losses(True)
    assert len(eager) == len(fast)
    # same seed, same batches, same updates: only TF32 and atomic-add order differ
    assert fast == pytest.approx(eager, rel=2e-2, abs=1e-3), list(zip(eager, fast))


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("inductor", [False, True])
def test_captured_plan_gives_the_eager_actions(inductor):
    device = torch.device("cuda")
    config = mage.TrainConfig(**SMALL_MAGE, device="cuda")
    data = mage.load_data(config, device)
    torch.manual_seed(0)
    model = mage.MAGE(config, data.obs_dim, data.cond_dim, data.act_dim).to(device).eval()
    obs, goals = torch.randn(5, data.obs_dim).numpy(), torch.randn(5, 2).numpy()
    actions = []
    for compile in (False, True):
        policy = mage.MagePolicy(model, data, dataclasses.replace(config, compile=compile, inductor=inductor), device)
        policy.reset(goals)
        actions.append([policy.act(obs, obs[:, 0] * 0) for _ in range(3)])
    assert all(abs(a - b).max() < 1e-4 for a, b in zip(*actions))


@pytest.mark.parametrize("overrides", [{}, dict(qk_norm=True),
                                       dict(task="antmaze-umaze", dataset_size=2000, plan_dims=2, head_track=8)],
                         ids=["plain", "qk_norm", "head_track"])
def test_the_plan_traces_as_one_graph_and_gives_the_eager_actions(overrides):
    """What ``inductor`` fuses at evaluation (MagePolicy._plan_actions, the K-pass generation and the head) traces
    without a graph break, so a fused plan is one kernel schedule inside its CUDA graph; checked on the CPU with the
    tracing backend (inductor's own code generation is exercised on the GPU)."""
    torch._dynamo.reset()
    config = mage.TrainConfig(**{**SMALL_MAGE, "dataset_size": 5_000, **overrides}, device="cpu", return_condition=True,
                              return_target_expectile=0.9)
    data = mage.load_data(config, torch.device("cpu"))
    torch.manual_seed(0)
    model = mage.MAGE(config, data.obs_dim, data.cond_dim, data.act_dim, data.obs_norm).eval()
    policy = mage.MagePolicy(model, data, config, torch.device("cpu"))
    cond = data.buffer.sample(6)["cond"][:, 0]
    with torch.no_grad():
        traced = torch.compile(policy._plan_actions, backend="eager", fullgraph=True)(cond)
        assert torch.allclose(traced, policy._plan_actions(cond), atol=1e-6)
