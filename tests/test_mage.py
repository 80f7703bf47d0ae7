"""MAGE: residual quantisation, the block-causal transformer, learning, resume and a tiny end-to-end run."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_algorithm

from shared import training

mage = load_algorithm("mage")

SMALL = dict(horizon=16, patch=2, scales=[1, 2, 4, 8], codebook_size=64, code_dim=8, ae_channels=32, ae_blocks=1,
             d_model=64, n_layers=2, n_heads=4, dropout=0.0, batch_size=32, warmup_steps=10)


def smooth_batch(batch: int = 32, horizon: int = 16, dim: int = 5, seed: int = 0) -> dict:
    """Segments of smooth random curves (sums of low-frequency sines), like state trajectories."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, horizon)[None, :, None]
    freq = torch.rand(batch, 1, dim, generator=g) * 3
    phase = torch.rand(batch, 1, dim, generator=g) * 6.28
    amp = torch.randn(batch, 1, dim, generator=g)
    x = amp * torch.sin(2 * math.pi * freq * t + phase)
    cond = torch.cat([x, torch.zeros(batch, horizon, 2)], -1)
    actions = torch.tanh(x[..., :2] - x.roll(-1, 1)[..., :2])
    return {"x": x, "cond": cond, "actions": actions, "mask": torch.ones(batch, horizon)}


def small_model(**overrides):
    torch.manual_seed(0)
    config = mage.TrainConfig(**{**SMALL, **overrides})
    return config, mage.MAGE(config, obs_dim=4, cond_dim=7, act_dim=2)


def fit(model, config, stage, batch, steps):
    opt = mage.make_optimizer(model, stage, config)
    return [float(mage.update(model, opt, batch, config, stage)["train/loss"]) for _ in range(steps)]


def test_scale_contributions_sum_to_the_quantised_latent_and_refine_it():
    config, model = small_model()
    batch = smooth_batch()
    fit(model, config, "autoencoder", batch, 150)
    model.eval()
    f = model.encoder(batch["x"])
    f_hat, idx, _, zs = model.vq(f)
    assert [i.shape[1] for i in idx] == config.scales
    assert torch.allclose(sum(zs), f_hat, atol=1e-5)
    # latent error with the first k scales only: falls as scales are added
    errors, partial = [], torch.zeros_like(f)
    for z in zs:
        partial = partial + z
        errors.append((partial - f).pow(2).mean().item())
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.8 * errors[0], errors


def test_requantize_corrects_a_wrong_coarse_scale_and_is_the_quantisation_without_one():
    config, model = small_model()
    batch = smooth_batch()
    fit(model, config, "autoencoder", batch, 150)
    model.eval()
    with torch.no_grad():
        f = model.encoder(batch["x"])
        _, idx, _, zs = model.vq(f)
        K, B = len(config.scales), len(f)
        none = torch.zeros(B, K, dtype=torch.bool)
        # no prediction used: the VQ's own quantisation
        targets, zs_none = model.vq.requantize(f, torch.cat(idx, 1), none)
        assert all(torch.equal(a, b) for a, b in zip(targets, idx))
        assert all(torch.allclose(a, b) for a, b in zip(zs_none, zs))
        # a wrong scale-2 token map: the later scales' targets change so that they reduce what it left of f
        wrong = [i.clone() for i in idx]
        wrong[1] = (wrong[1] + 1) % config.codebook_size
        use = none.clone()
        use[:, 1] = True
        targets, zs_used = model.vq.requantize(f, torch.cat(wrong, 1), use)
        assert torch.equal(targets[0], idx[0]) and torch.equal(targets[1], idx[1])  # targets up to it: unchanged
        assert any(not torch.equal(a, b) for a, b in zip(targets[2:], idx[2:]))
        assert torch.allclose(zs_used[1], model.vq.embed_scale(1, wrong[1]))  # the input holds the wrong tokens
        err_after_wrong = (f - zs_used[0] - zs_used[1]).pow(2).mean()
        assert (f - sum(zs_used)).pow(2).mean() < 0.7 * err_after_wrong  # the finer scales correct most of it


def test_scheduled_sampling_is_teacher_forcing_at_zero_and_still_learns():
    config, model = small_model()
    batch = smooth_batch()
    fit(model, config, "autoencoder", batch, 150)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    loss0, _ = mage.transformer_loss(model, batch, config)
    torch.manual_seed(1)
    loss_ss0, _ = mage.transformer_loss(model, batch, dataclasses.replace(config, scheduled_sampling=0.0))
    assert torch.equal(loss0, loss_ss0)
    ss = dataclasses.replace(config, scheduled_sampling=0.5, lr=1e-3)
    model.load_state_dict(state)
    losses = fit(model, ss, "transformer", batch, 120)
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10]), (losses[:10], losses[-10:])


def test_finer_scale_tokens_never_change_coarser_logits():
    config, model = small_model()
    model.eval()
    cond = torch.randn(4, 7)
    inputs = torch.randn(4, sum(config.scales) - 1, config.code_dim)
    bounds = model.transformer.bounds  # [0, 1, 3, 7, 15]
    base = model.transformer(cond, inputs)
    for k in range(1, len(config.scales)):
        changed = inputs.clone()
        changed[:, bounds[k] - 1:] += torch.randn_like(changed[:, bounds[k] - 1:])  # scales >= k+1 (inputs skip slot 0)
        out = model.transformer(cond, changed)
        assert torch.equal(out[:, :bounds[k]], base[:, :bounds[k]])
        assert not torch.allclose(out[:, bounds[k]:], base[:, bounds[k]:])


@pytest.mark.parametrize("qk_norm", [False, True])
def test_kv_cache_generation_equals_teacher_forcing_on_its_own_tokens(qk_norm):
    config, model = small_model(qk_norm=qk_norm)
    model.eval()
    cond = torch.randn(6, 7)
    f_hat, idx = model.transformer.generate(cond, model.vq)
    zs = [model.vq.embed_scale(k, i) for k, i in enumerate(idx)]
    assert torch.allclose(sum(zs), f_hat, atol=1e-5)
    logits = model.transformer(cond, model.teacher_inputs(zs))
    assert torch.equal(logits.argmax(-1), torch.cat(idx, 1))


def test_qk_norm_makes_attention_blind_to_the_size_of_queries_and_keys_and_still_learns():
    """--qk_norm: attention logits = cosine(q, k) x a learnt per-head temperature (at most 100), so growing query and
    key weights (the logit growth behind loss spikes) cannot sharpen the attention; the transformer still fits."""
    cond = torch.randn(4, 7)
    for qk_norm in (True, False):
        config, model = small_model(qk_norm=qk_norm)
        model.eval()
        inputs = model.teacher_inputs([model.vq.embed_scale(k, torch.randint(0, 8, (4, n)))
                                       for k, n in enumerate(config.scales)])
        base = model.transformer(cond, inputs)
        d = config.d_model
        with torch.no_grad():
            for block in model.transformer.blocks:  # queries and keys 10x larger, values untouched
                block.qkv.weight[:2 * d] *= 10
                block.qkv.bias[:2 * d] *= 10
        assert torch.allclose(model.transformer(cond, inputs), base, atol=1e-4) == qk_norm
    config, model = small_model(lr=1e-3, qk_norm=True)
    batch = smooth_batch(batch=16)
    fit(model, config, "autoencoder", batch, 300)
    tf = fit(model, config, "transformer", batch, 300)
    assert tf[-1] < tf[0] / 10, (tf[0], tf[-1])


def test_single_scale_k1_runs_every_stage():
    """The K = 1 ablation (--scales [L]): no coarser scale feeds the transformer, every stage still trains."""
    config, model = small_model(scales=[8])
    batch = smooth_batch(batch=8)
    for loss_fn in (lambda: mage.autoencoder_loss(model, batch, config),
                    lambda: mage.transformer_loss(model, batch, config),
                    lambda: mage.end_to_end_loss(model, batch, config)):
        loss, _ = loss_fn()
        assert torch.isfinite(loss)
        loss.backward()
    f_hat, idx = model.transformer.generate(batch["cond"][:, 0], model.vq)
    assert f_hat.shape == (8, config.code_dim, 8) and len(idx) == 1


@pytest.mark.slow
def test_autoencoder_and_transformer_overfit_a_tiny_batch():
    config, model = small_model(lr=1e-3)
    batch = smooth_batch(batch=16)
    ae = fit(model, config, "autoencoder", batch, 300)
    assert ae[-1] < ae[0] / 10, (ae[0], ae[-1])
    tf = fit(model, config, "transformer", batch, 300)
    assert tf[-1] < tf[0] / 10, (tf[0], tf[-1])


TINY_DATA = dict(task="maze2d-umaze", dataset_size=30_000, wandb_mode="disabled", device="cpu")


def test_resume_after_a_kill_reaches_the_same_parameters(tmp_path):
    steps = dict(ae_steps=30, tf_steps=30, e2e_steps=20, checkpoint_every=25, log_every=10)
    config = mage.TrainConfig(**SMALL, **TINY_DATA, **steps, out_dir=str(tmp_path / "a"))
    data = mage.load_data(config, torch.device("cpu"))

    def run(cfg, kill_at=None):
        torch.manual_seed(cfg.seed)
        model = mage.MAGE(cfg, data.obs_dim, data.cond_dim, data.act_dim)
        run_dir = tmp_path / cfg.out_dir
        logger = mage.Logger(cfg, "mage", run_dir, "disabled")
        if kill_at is not None:  # simulate SIGKILL: the process dies right after logging step kill_at
            def die(metrics, step):
                if step >= kill_at:
                    raise KeyboardInterrupt
            logger.log = die
        try:
            mage.train(cfg, data, model, run_dir, logger, torch.device("cpu"))
        except KeyboardInterrupt:
            pass
        return model

    full = run(config)
    killed_cfg = dataclasses.replace(config, out_dir=str(tmp_path / "b"))
    killed = run(killed_cfg, kill_at=60)  # dies in stage 2, after the checkpoint of step 50
    resumed = run(dataclasses.replace(killed_cfg, resume=True))
    a, b = full.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6), name
    # the kill left the run short of the end: resuming, not the killed run itself, reached the full run's weights
    head = "transformer.head.weight"
    assert not torch.allclose(killed.state_dict()[head], a[head], atol=1e-6)


@pytest.mark.slow
def test_tiny_config_learns_and_beats_random(tmp_path):
    from shared.utils import parse_config

    # half the tiny config's budget keeps CI short; learning is what is tested (the README's scores: benchmarks/tiny/)
    args = ["--config", str(ROOT / "configs/mage/tiny.yaml"), "--out_dir", str(tmp_path), "--wandb_mode", "disabled",
            "--ae_steps", "1000", "--tf_steps", "1000", "--e2e_steps", "800"]
    config = parse_config(mage.TrainConfig, args)
    final = mage.main(config)
    curve = [line for line in (tmp_path / "mage/maze2d-umaze/seed0/metrics.jsonl").read_text().splitlines()]
    assert curve, "no training metrics were logged"
    # random policy = 0 (its 20-episode mean has std ~4), expert controller = 100; at this budget without end_fraction
    # seeds 0-4 scored 95.9 / 93.9 / 93.6 / 48.4 / 94.3 (2 AMD EPYC cores), 29.0 with the earlier SiLU head
    assert final["normalized_score"] > 40.0, final["normalized_score"]
    # the diagnosis script reads the run folder back and measures the policy's goal-reaching behaviour
    run_dir = tmp_path / "mage/maze2d-umaze/seed0"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/mage_diagnose.py"), str(run_dir), "--episodes", "4",
                          "--rollouts", str(tmp_path / "rollouts.png")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "inverse-dynamics head" in out.stdout and "controller on plan step 1" in out.stdout, out.stdout
    assert "of 4 episodes never reached the goal" in out.stdout and (tmp_path / "rollouts.png").stat().st_size > 10_000
    # the stall probe reports on the episodes that failed, if any did
    assert ("stall probe" in out.stdout) == ("0 of 4 episodes" not in out.stdout), out.stdout


@pytest.mark.slow
def test_stage2_trains_the_head_on_predicted_token_latents():
    """The transformer stage also fits L_inv (the head's inputs are the latent of the predicted tokens, so the
    encoder's true latent, which carries the logged action noise, never reaches it there)."""
    config, model = small_model(lr=1e-3)
    batch = smooth_batch(batch=16)
    fit(model, config, "autoencoder", batch, 100)
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    opt = mage.make_optimizer(model, "transformer", config)
    assert {id(p) for p in model.inverse.parameters()} <= {id(p) for g in opt.param_groups for p in g["params"]}
    inv = []
    for _ in range(150):
        model.train(), model.encoder.eval(), model.vq.eval()
        loss, stats = mage.transformer_loss(model, batch, config)
        opt.zero_grad()
        loss.backward()
        opt.step()
        inv.append(float(stats["tf/inv"]))
    assert inv[-1] < inv[0] / 3, (inv[0], inv[-1])
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))
    # the stage's loss is CE + w_inv L_inv, and L_inv's gradient reaches the head (CE's never does)
    loss, stats = mage.transformer_loss(model, batch, dataclasses.replace(config, w_inv=2.0))
    assert torch.allclose(loss, stats["tf/ce"] + 2.0 * stats["tf/inv"])
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.inverse.parameters())


def test_expectile_loss_is_minimised_at_the_upper_expectile():
    targets = torch.tensor([0.0, 0.1, 0.2, 0.9])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        training.expectile_loss(targets - v.expand(4), 0.9).backward()
        opt.step()
    # the 0.9-expectile e solves sum 0.9 (t - e)+ = sum 0.1 (e - t)+ : far above the mean 0.3, below the max
    e = v.item()
    above, below = (targets - e).clamp_min(0).sum(), (e - targets).clamp_min(0).sum()
    assert 0.3 < e < 0.9 and abs(0.9 * above - 0.1 * below) < 1e-4


def test_a_learnt_return_target_replaces_the_fixed_one():
    cfg = mage.TrainConfig(**SMALL, **TINY_DATA, return_condition=True, return_target_expectile=0.9)
    data = mage.load_data(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = mage.MAGE(cfg, data.obs_dim, data.cond_dim, data.act_dim)
    obs = np.random.default_rng(0).uniform(0.5, 3.0, (3, data.obs_dim)).astype(np.float32)

    def actions(config):
        policy = mage.MagePolicy(model, data, config, torch.device("cpu"))
        policy.reset(np.array([[3.0, 1.0]] * 3))
        return policy.act(obs, np.zeros(3))

    learnt = [actions(dataclasses.replace(cfg, target_return=r)) for r in (0.1, 0.9)]
    assert np.allclose(*learnt)  # the plan's R comes from ReturnTarget, whatever target_return says
    model.return_target = None  # as built with return_target_expectile 0: target_return is the plan's R
    fixed = [actions(dataclasses.replace(cfg, target_return=r, return_target_expectile=0.0)) for r in (0.1, 0.9)]
    assert not np.allclose(*fixed)
    with pytest.raises(mage.RunError, match="needs --return_condition true"):
        mage.load_data(dataclasses.replace(cfg, return_condition=False), torch.device("cpu"))


def test_a_state_only_head_reads_the_state_columns_of_every_condition_layout_and_ignores_the_rest():
    device = torch.device("cpu")
    for return_condition in (True, False):  # (R_t, s_t, g) and (s_t, g)
        cfg = mage.TrainConfig(**SMALL, **TINY_DATA, return_condition=return_condition, head_condition="state")
        data = mage.load_data(cfg, device)
        batch = data.buffer.sample(8)
        cols = mage.state_columns(cfg, data.obs_dim, data.cond_dim)
        assert torch.equal(batch["cond"][:, 0, cols], batch["x"][:, 0, 1:])  # exactly s_t, as load_data builds it
        torch.manual_seed(0)
        model = mage.MAGE(cfg, data.obs_dim, data.cond_dim, data.act_dim)
        z, cond = torch.randn(8, cfg.horizon // cfg.patch, cfg.code_dim), batch["cond"][:, 0]
        other = cond.clone()
        other[:, :cols.start] += 1.0  # another R (where there is one)
        other[:, cols.stop:] += 1.0  # another goal
        assert torch.equal(model.inverse(z, cond), model.inverse(z, other))
        moved = cond.clone()
        moved[:, cols] += 1.0
        assert not torch.allclose(model.inverse(z, cond), model.inverse(z, moved))
        full = mage.MAGE(dataclasses.replace(cfg, head_condition="all"), data.obs_dim, data.cond_dim, data.act_dim)
        assert not torch.allclose(full.inverse(z, cond), full.inverse(z, other))  # the default head sees the goal
    assert mage.state_columns(cfg, 4, 5) == slice(1, 5)  # reward tasks: (R_t, s_t)
    with pytest.raises(mage.RunError, match="head_condition must be 'all', 'state' or 'track'"):
        mage.MAGE(dataclasses.replace(cfg, head_condition="goal"), data.obs_dim, data.cond_dim, data.act_dim)


def test_one_training_writes_the_maze2d_and_multi2d_results_of_the_same_policy(tmp_path):
    """--also_evaluate (benchmarks/run.py's twin runs): the policy trained on maze2d-umaze is also evaluated on
    multi2d-umaze (same data, random goals) and that result is written as multi2d-umaze's, refused up front when
    the file exists or the task trains on other data."""
    paths = {t: tmp_path / "results" / t / "seed0.json" for t in ("maze2d-umaze", "multi2d-umaze")}
    config = mage.TrainConfig(**SMALL, **TINY_DATA, ae_steps=4, tf_steps=4, e2e_steps=2, log_every=2,
                              eval_episodes=4, num_eval_envs=4, out_dir=str(tmp_path / "runs"),
                              results_path=str(paths["maze2d-umaze"]),
                              also_evaluate=f"multi2d-umaze={paths['multi2d-umaze']}")
    mage.main(config)
    own, twin = (json.loads(p.read_text()) for p in paths.values())
    assert (own["task"], twin["task"], twin["config"]["task"]) == ("maze2d-umaze", "multi2d-umaze", "multi2d-umaze")
    assert twin["train_steps"] == own["train_steps"] == 10 and "maze2d-umaze run" in twin["trained_by"]
    assert twin["config"]["also_evaluate"] == "" and twin["learning_curve"] == []
    fixed, random_goals = ({tuple(g) for g in r["episode_detail"]["goal_xy"]} for r in (own, twin))
    assert len(fixed) == 1 and len(random_goals) > 1  # D4RL's fixed goal vs a goal per episode
    again = dataclasses.replace(config, out_dir=str(tmp_path / "runs2"), results_path=str(tmp_path / "other.json"))
    with pytest.raises(mage.RunError, match="multi2d-umaze/seed0.json already exists"):
        mage.main(again)
    with pytest.raises(mage.RunError, match="trains on maze2d-large"):
        mage.main(dataclasses.replace(again, also_evaluate=f"multi2d-large={tmp_path / 'x.json'}"))
    with pytest.raises(mage.RunError, match="expected TASK=PATH"):
        mage.main(dataclasses.replace(again, also_evaluate="multi2d-umaze"))


def test_relabelled_goals_are_later_positions_of_the_segment_own_trajectory_with_their_hindsight_return():
    cfg = mage.TrainConfig(**SMALL, **TINY_DATA, return_condition=True, goal_relabel=1.0)
    data = mage.load_data(cfg, torch.device("cpu"))
    buffer, radius = data.buffer, data.goal_radius
    torch.manual_seed(0)
    batch = buffer.sample(64, with_start=True)
    start = batch["start"].clone()
    collector_goals = batch["cond"][:, 0, -2:].clone()
    out = mage.relabel_goals(batch, data, cfg)
    assert "start" not in out and "pos" not in out and out["cond"].shape == (64, cfg.horizon, data.cond_dim)
    goal = data.obs_norm.goal().unnormalize(out["cond"][:, 0, -2:]).numpy()
    pos, last = buffer.fields["pos"].numpy(), buffer.last_row.numpy()
    exact = 0
    for b, first in enumerate(start.tolist()):
        rest = pos[first:last[first] + 1]  # this step to the end of its trajectory
        assert np.linalg.norm(rest - goal[b], axis=1).min() < 1e-4  # a later position of the same trajectory
        hits = np.flatnonzero(np.linalg.norm(rest - goal[b], axis=1) <= radius)
        for t in range(cfg.horizon):
            if batch["mask"][b, t] == 0:
                continue
            later = hits[hits >= t]
            true = cfg.discount ** (later[0] - t) if len(later) else 0.0
            ours = float(out["x"][b, t, 0])
            assert ours <= true + 1e-5  # a first arrival past the segment (before the goal row) is not seen
            if len(later) and later[0] < cfg.horizon:  # the first arrival inside the segment: exact
                assert ours == pytest.approx(true, abs=1e-5)
                exact += 1
    assert exact > 64 * cfg.horizon // 4
    assert torch.equal(out["cond"][..., :out["x"].shape[-1]], out["x"])  # (R_t, s_t, g), R as relabelled
    assert not torch.allclose(out["cond"][:, 0, -2:], collector_goals)
    # a share of 0 changes nothing; without a goal there is nothing to relabel
    cfg0 = dataclasses.replace(cfg, goal_relabel=1e-9)
    batch = buffer.sample(64, with_start=True)
    x, cond = batch["x"].clone(), batch["cond"].clone()
    out = mage.relabel_goals(batch, data, cfg0)
    assert torch.equal(out["x"], x) and torch.equal(out["cond"], cond)
    with pytest.raises(mage.RunError, match="goal_relabel needs a goal task"):
        mage.load_data(dataclasses.replace(cfg, task="hopper-medium", dataset_size=2000), torch.device("cpu"))


def test_plan_dims_generates_the_path_only_keeps_the_whole_state_as_condition_and_learns():
    cfg = mage.TrainConfig(**SMALL, **TINY_DATA, return_condition=True, plan_dims=2, goal_relabel=0.5)
    data = mage.load_data(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    batch = mage.sample_batch(data, cfg)  # with relabelled goals: the condition keeps its (R_t, s_t, g) layout
    assert batch["x"].shape[-1] == 3 and batch["cond"].shape[-1] == 1 + data.obs_dim + 2
    assert torch.equal(batch["cond"][..., :3], batch["x"])  # R_t and the (x, y) path are the state's first dims
    model = mage.MAGE(cfg, data.obs_dim, data.cond_dim, data.act_dim)
    assert model.encoder.net[0].in_channels == 3
    assert model.decode(torch.zeros(2, cfg.code_dim, 8), batch["cond"][:2, 0]).shape == (2, cfg.horizon, 3)
    losses = fit(model, cfg, "autoencoder", batch, 60)
    assert losses[-1] < 0.5 * losses[0]
    policy = mage.MagePolicy(model, data, cfg, torch.device("cpu"))
    policy.reset(np.array([[3.0, 1.0]] * 2))
    assert policy.act(np.ones((2, data.obs_dim), np.float32), np.zeros(2)).shape == (2, data.act_dim)
    for bad, match in ((dict(plan_dims=1), "must be 0 or >= 2"), (dict(plan_dims=5), "more than the 4 dims")):
        with pytest.raises(mage.RunError, match=match):
            mage.load_data(dataclasses.replace(cfg, **bad), torch.device("cpu"))
    with pytest.raises(mage.RunError, match="plan_dims must be >= 0"):
        mage.TrainConfig(plan_dims=-1)


def test_waypoint_graph_stitches_two_walks_and_respects_their_direction():
    east = np.stack([np.linspace(0.1, 5.9, 30), np.full(30, 0.5)], 1)  # walk 1: along y = 0.5 to x = 5.9
    north = np.stack([np.full(30, 5.5), np.linspace(0.5, 5.9, 30)], 1)  # walk 2: from (5.5, 0.5) up to y = 5.9
    xy = np.concatenate([east, north])
    graph = mage.WaypointGraph(xy, np.array([[0, 30], [30, 60]]), square=1.0)
    start, goal = np.array([0.2, 0.5]), np.array([5.5, 5.8])
    dist, ahead = graph.route(goal, hops=3)
    s = graph.node(start[None])[0]
    assert dist[s] == 10  # 5 squares east on walk 1, then 5 north on walk 2: neither walk alone goes there
    assert np.allclose(graph.centre[ahead[s]], [3.5, 0.5], atol=0.1)  # three squares on, along the first walk
    assert dist[graph.node(goal[None])[0]] == 0
    back, _ = graph.route(start, hops=3)  # no walk leads back west: no route
    assert back[graph.node(goal[None])[0]] == -1
    assert graph.node(np.array([[20.0, -7.0]]))[0] in range(len(graph.centre))  # off the data: the nearest square


def test_waypoints_become_the_plan_goal_until_the_goal_itself_is_near():
    cfg = mage.TrainConfig(**SMALL, **TINY_DATA, return_condition=True, waypoint_hops=2, waypoint_square=0.25)
    data = mage.load_data(cfg, torch.device("cpu"))
    graph = data.waypoints
    model = mage.MAGE(cfg, data.obs_dim, data.cond_dim, data.act_dim)
    policy = mage.MagePolicy(model, data, cfg, torch.device("cpu"))
    goal = graph.centre[0]
    dist, ahead = graph.route(goal, 2)
    far, near = dist.argmax(), np.flatnonzero(dist == 1)[0]  # the farthest square with a route, and a neighbour
    assert dist[far] > 4
    obs = np.zeros((2, data.obs_dim), np.float32)
    obs[:, :2] = graph.centre[[far, near]]
    policy.reset(np.stack([goal, goal]).astype(np.float32))
    g = data.obs_norm.goal().unnormalize(policy.condition(obs)[:, -2:].numpy())
    assert np.allclose(g[0], graph.centre[ahead[far]], atol=1e-4)  # the waypoint two squares on
    assert dist[ahead[far]] == dist[far] - 2  # two squares nearer the goal along the route
    assert np.allclose(g[1], goal, atol=1e-4)  # the goal itself once it is this close
    assert policy.act(obs, np.zeros(2)).shape == (2, data.act_dim)
    with pytest.raises(mage.RunError, match="waypoint_hops"):
        mage.load_data(dataclasses.replace(cfg, waypoint_square=0.0), torch.device("cpu"))
