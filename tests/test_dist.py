"""Data parallelism through torchrun on CPU (gloo): 2 ranks train like 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, losses, tiny_run_overrides, zen_of_python

from model.checkpoint import load_model
from train.loop import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(tmp_path, monkeypatch):
    from train import perf

    corpus = zen_of_python(tmp_path)
    # a cached peak for every dtype and thread count the runs may use: measured on a busy machine (the suite's
    # other worker) the peak is not steady, so it would not be cached and each run would measure its own.
    # Cached by peak_flops itself from a steady stubbed measurement; the ranks are other processes and read it.
    monkeypatch.setattr(perf, "measure_peak", lambda device, dtype: (1e12, True))
    threads = torch.get_num_threads()
    try:
        for n in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(n)
            for dtype in (torch.float32, torch.bfloat16):
                perf.peak_flops(torch.device("cpu"), dtype, tmp_path / "cache")
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()  # the runs below measure nothing: every peak they read is cached
    # 1 process, 8 rows per step
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "single", **{"trainer.batch_size": 8})))
    # 2 ranks x 4 rows: each rank takes its half of the same global batch; DDP averages the gradients
    overrides = tiny_run_overrides(tmp_path, corpus, "ddp", **{"trainer.batch_size": 4})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "train"]
    overrides.append(f"hydra.run.dir={tmp_path / 'ddp'}")  # Hydra's own files too, not under runs/ of the repo
    proc = subprocess.run(cmd + overrides, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single, ddp = list(losses(tmp_path / "single").values()), list(losses(tmp_path / "ddp").values())
    assert len(single) == len(ddp) == 8
    assert ddp == pytest.approx(single, rel=1e-5)  # fp32 sums in a different order: equal to rounding
    # MFU is the job's FLOPs over the job's peak: with 2 ranks, twice one device's measured peak (it read 2x high)
    measured = set(json.loads((tmp_path / "cache" / "peak_flops.json").read_text()).values())
    for name, world in (("single", 1), ("ddp", 2)):
        model, _ = load_model(tmp_path / name)
        flops_per_token = model.flops_per_token(model.config.block_size)
        tps, mfu = losses(tmp_path / name, "perf/tokens_per_sec"), losses(tmp_path / name, "perf/mfu")
        device_peaks = {flops_per_token * tps[s] / mfu[s] / world for s in mfu}
        assert all(any(p == pytest.approx(m, rel=1e-6) for m in measured) for p in device_peaks), (name, measured)


def _torchrun(tmp_path: Path, overrides: list[str], port: int, env: dict | None = None, timeout: int = 300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "train"]
    return subprocess.run(cmd + overrides, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_then_resume_on_one(tmp_path):
    # FSDP2 (fully_shard per block) on gloo: the same trajectory as one process with the same global batch; its
    # checkpoint is the full state, so one process resumes it, continues identically, and samples from it
    corpus = zen_of_python(tmp_path)
    common = {"schedule": "constant", "schedule.warmup_steps": 2}  # lr must not depend on max_steps: two runs
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "single", **common, **{"trainer.batch_size": 8})))
    first = tiny_run_overrides(tmp_path, corpus, "fsdp", **common, **{"trainer.batch_size": 4,
                               "trainer.max_steps": 4, "trainer.parallel": "fsdp"})  # fmt: skip
    proc = _torchrun(tmp_path, [*first, f"hydra.run.dir={tmp_path / 'fsdp'}"], 29518)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = losses(tmp_path / "single")
    assert list(losses(tmp_path / "fsdp").values()) == pytest.approx([single[s] for s in range(1, 5)], rel=1e-5)
    for key in ("train/update_ratio", "train/update_ratio_max", "train/param_norm"):  # summed over the shards
        one, two = losses(tmp_path / "single", key), losses(tmp_path / "fsdp", key)
        assert list(two.values()) == pytest.approx([one[s] for s in range(1, 5)], rel=1e-4), key

    second = tiny_run_overrides(tmp_path, corpus, "fsdp", **common, **{"trainer.batch_size": 8, "resume": "auto"})
    run(compose_train(second))  # one process, the same global batch of 8 rows
    resumed = losses(tmp_path / "fsdp")
    assert [resumed[s] for s in range(5, 9)] == pytest.approx([single[s] for s in range(5, 9)], rel=1e-5)

    from model.checkpoint import load_model
    from sample import generate

    model, tokenizer = load_model(tmp_path / "fsdp")
    assert len(generate(model, tokenizer, ["Beautiful"], max_new_tokens=4, do_sample=False)[0][0].token_ids) == 4


@pytest.mark.slow
def test_fsdp_resumes_on_fsdp_from_rank_0s_read_of_the_checkpoint(tmp_path):
    # 2 FSDP ranks train 4 steps and save; 2 FSDP ranks resume: rank 0 alone reads the weights and broadcasts them
    # (the others pass nothing), the save goes through a model made of the gathered tensors (no init), and the
    # continuation equals one process running all 8 steps
    corpus = zen_of_python(tmp_path)
    common = {"schedule": "constant", "schedule.warmup_steps": 2, "trainer.batch_size": 4, "trainer.parallel": "fsdp"}
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "single", **{**common, "trainer.batch_size": 8,
                                                                          "trainer.parallel": "ddp"})))  # fmt: skip
    first = tiny_run_overrides(tmp_path, corpus, "fsdp", **common, **{"trainer.max_steps": 4})
    proc = _torchrun(tmp_path, [*first, f"hydra.run.dir={tmp_path / 'fsdp'}"], 29520)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = tiny_run_overrides(tmp_path, corpus, "fsdp", **common, **{"resume": "auto"})
    proc = _torchrun(tmp_path, [*second, f"hydra.run.dir={tmp_path / 'fsdp'}"], 29521)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, resumed = losses(tmp_path / "single"), losses(tmp_path / "fsdp")
    assert [resumed[s] for s in range(5, 9)] == pytest.approx([single[s] for s in range(5, 9)], rel=1e-5)
    model, _ = load_model(tmp_path / "fsdp")
    twin, _ = load_model(tmp_path / "single")
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    from safetensors import safe_open

    from model.checkpoint import resolve_checkpoint

    def stored(run_dir):
        with safe_open(str(resolve_checkpoint(run_dir) / "model.safetensors"), "pt") as f:
            return sorted(f.keys())

    assert stored(tmp_path / "fsdp") == stored(tmp_path / "single")  # the tied embedding stored once, as one process


@pytest.mark.slow
def test_a_failing_rank_stops_the_job_with_its_message(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "fails", **{"trainer.batch_size": 4})
    proc = _torchrun(tmp_path, [*overrides, f"hydra.run.dir={tmp_path / 'fails'}"], 29519,
                     env={"NANOLOOM_FAULT": "error:3:1", "NANOLOOM_DIST_TIMEOUT": "60"}, timeout=120)  # fmt: skip
    assert proc.returncode != 0  # rank 0 does not wait forever in the next all-reduce: torchrun stops it
    assert "injected failure on rank 1 at step 3" in proc.stderr
    assert max(losses(tmp_path / "fails"), default=0) < 3  # rank 0 logged no step past the failure


def test_slurm_launcher_config_composes_with_the_usual_fields():
    from hydra import compose, initialize_config_dir

    from train.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.tasks_per_node == launcher.gpus_per_node == 8
    assert {"nodes", "timeout_min", "cpus_per_task", "mem_gb", "account", "max_num_timeout"} <= set(launcher)


def test_a_slurm_task_joins_as_its_rank(monkeypatch):
    # one SLURM task per device: the ranks come from SLURM (as submitit reads them), no torchrun needed
    from train import dist

    torchrun = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in torchrun}  # setup writes these: keep them in this test
    env.update({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
                "SLURM_NODEID": "1"})  # fmt: skip
    monkeypatch.setattr(os, "environ", env)
    joined = []
    monkeypatch.setattr(dist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.dist, "init_process_group", lambda **kw: joined.append(kw["backend"]))
    info, _ = dist.setup(torch.device("cpu"))
    assert (info.rank, info.local_rank, info.world_size) == (3, 1, 4) and joined == ["gloo"]
    assert os.environ["MASTER_ADDR"] == "gpu07"  # the job's first node


@pytest.mark.slow
def test_local_multirun_sweeps_the_values(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"trainer.max_steps": 2})
    overrides = [o for o in overrides if not o.startswith(("paths.run_dir=", "run_name="))]
    cmd = [
        sys.executable,
        "-m",
        "train",
        "-m",
        *overrides,
        "optim.lr=1e-3,3e-3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lrs = sorted(yaml_value(tmp_path / "sweep" / str(i) / "config.yaml", "lr") for i in (0, 1))
    assert lrs == [0.001, 0.003]


def yaml_value(path: Path, key: str) -> float:
    from omegaconf import OmegaConf

    return OmegaConf.load(path).optim[key]


@pytest.mark.parametrize(("local_rank", "visible", "index"), [(3, 8, 3), (3, 1, 0), (5, 4, 1)])
def test_each_rank_takes_its_gpu_and_binds_the_process_group_to_it(monkeypatch, local_rank, visible, index):
    """torchrun gives every rank all GPUs (cuda:LOCAL_RANK); SLURM's per-task binding gives each one GPU, so the
    rank's GPU is LOCAL_RANK modulo the visible count. The NCCL group is bound to it with device_id (torch.cuda and
    init_process_group are mocked: no GPU here)."""
    import torch.distributed as tdist

    from train import dist as ours

    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    calls = []
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.append(kw))
    info, device = ours.setup(torch.device("cuda"))
    assert device == torch.device("cuda", index) and info.local_rank == local_rank
    assert calls[0]["backend"] == "nccl" and calls[0]["device_id"] == device
    ours.setup(torch.device("cpu"))
    assert calls[1]["backend"] == "gloo" and "device_id" not in calls[1]


def test_ddp_does_not_broadcast_buffers_every_forward(monkeypatch):
    from model import GPT, GPTConfig
    from train import dist as ours

    seen = {}
    monkeypatch.setattr(ours, "DistributedDataParallel", lambda model, **kw: seen.update(kw) or model)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=16, pos="rope"))
    assert [name for name, _ in model.named_buffers()] == ["rope"]  # the RoPE table: the same on every rank
    ours.wrap(model, ours.DistInfo(0, 0, 2), torch.device("cpu"))
    assert seen == {"device_ids": None, "broadcast_buffers": False}


def _slow_main_rank(rank: int, port: int, out: str) -> None:
    """A rank of a 2-process gloo job whose collective timeout is 2 s; rank 0 'prepares' for 5 s."""
    import time

    from train import dist as ours

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), NANOLOOM_DIST_TIMEOUT="2")  # fmt: skip
    info, _ = ours.setup(torch.device("cpu"))
    try:
        if info.is_main:
            time.sleep(5)
        ours.wait_for_main(info, "prepare the dataset")
        Path(out, f"rank{rank}").write_text("ok")
    finally:
        ours.teardown()


@pytest.mark.slow
def test_ranks_wait_for_rank_0s_data_preparation_past_the_collective_timeout(tmp_path):
    """Preparing a new corpus can outlast NANOLOOM_DIST_TIMEOUT (sized for training collectives): the waiting ranks
    wait on a group of its own, with its own timeout, instead of dying in a barrier of the training group."""
    import torch.multiprocessing as mp

    mp.start_processes(_slow_main_rank, args=(29531, str(tmp_path)), nprocs=2, start_method="spawn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
