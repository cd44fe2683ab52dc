"""The parts a training run is built from, and the step they take: used by the loop (train/loop.py) and by the dry
run (train/dry_run.py) alike, so the dry run measures the loop's own step.

build_parts prepares the data (rank 0), builds the tokenizer, model, optimizer, grad scaler and train loader;
build_loader gives the batch source of the task's objective; forward_backward is one step's gradient accumulation;
unscale_and_clip and apply_update are the step's update as the loop makes it (grad scaler, clipping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from data.config import OBJECTIVES
from data.loader import CausalLMLoader, InstructLoader, Seq2SeqLoader, SpanCorruptionLoader
from data.prepare import load_meta, prepare
from data.tokenizer import tokenizer_from_spec
from model.checkpoint import load_model
from model.registry import build_model
from nanoloom.device import resolve_dtype
from train import dist
from train.config import TrainConfig
from train.optim import build_optimizer
from train.scoring import loss_only, unwrapped


@dataclass
class Parts:
    """What a run is built from before any state is restored: data, tokenizer, model, optimizer, loader."""

    data_dir: Path
    tokenizer: Any
    model_cfg: Any
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    train_loader: Any
    dtype: torch.dtype


def build_parts(cfg: TrainConfig, info: dist.DistInfo, device: torch.device) -> Parts:
    """Prepare the data (rank 0; a no-op when cached), then build the tokenizer, model, optimizer and train loader."""
    tcfg = cfg.trainer
    cache_dir = Path(cfg.paths.cache_dir)
    dtype = resolve_dtype(tcfg.dtype, device)
    if device.type == "cuda":  # TF32 matmuls for any fp32 work left outside autocast (numerics: ~1e-3 rel.)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    source = load_model(cfg.init_from) if cfg.init_from else None  # (model, tokenizer) to fine-tune, on the CPU
    given = source[1] if source else None  # data.tokenizer=model tokenizes with it

    # data: rank 0 prepares (a no-op when cached), the others wait and then find it
    if info.is_main:
        data_dir = prepare(cfg.data, cache_dir, tokenizer=given)
    dist.wait_for_main(info, "prepare the dataset (a new corpus is tokenized once, then cached)")
    if not info.is_main:
        data_dir = prepare(cfg.data, cache_dir, progress=False, tokenizer=given)
    meta = load_meta(data_dir)
    kind = source[0].config.kind if source else cfg.model.kind
    tokenizer = tokenizer_from_spec(meta["tokenizer"])
    if source is not None and getattr(source[1], "num_sentinels", 0):  # fine-tuning keeps the source's vocabulary
        tokenizer = tokenizer.with_sentinels(source[1].num_sentinels)
    elif source is None and kind == "t5":  # span corruption needs sentinels; seq2seq keeps the vocabulary alike
        tokenizer = tokenizer.with_sentinels(T5_SENTINELS)
    if cfg.task.objective == "instruct":  # the chat template's ids, appended (new rows of a fine-tuned model)
        tokenizer = tokenizer.with_chat()
    _check_objective(kind, cfg.task.objective, meta.get("layout", "documents"), cfg.data.name)
    model_cfg = _init_config(cfg, source, tokenizer) if source else _fit_to_tokenizer(cfg.model, tokenizer)

    # model and optimizer: the same init on every rank, then per-rank dropout streams
    torch.manual_seed(tcfg.seed)
    raw_model = build_model(model_cfg)
    if source is not None:
        _load_source_weights(raw_model, source[0], cfg.init_from)
    raw_model.activation_checkpointing = tcfg.activation_checkpointing
    raw_model.to(device)
    if info.enabled and tcfg.parallel == "fsdp":
        if cfg.optim.name == "muon" or dtype == torch.float16:
            what = "optim=muon (it orthogonalises whole matrices)" if cfg.optim.name == "muon" else "fp16"
            raise ValueError(f"trainer.parallel=fsdp does not support {what}; use trainer.parallel=ddp")
        dist.shard(raw_model, dtype)  # before the optimizer: it must hold the sharded parameters
    optimizer = build_optimizer(raw_model, cfg.optim, device.type)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if scaler is not None and cfg.optim.name == "muon":
        raise ValueError("optim=muon with fp16 (a grad scaler) is not supported; use trainer.dtype=bfloat16 or float32")
    torch.manual_seed(tcfg.seed + info.rank)
    train_loader = build_loader(cfg, data_dir, "train", tokenizer, model_cfg, info, device)
    return Parts(data_dir, tokenizer, model_cfg, raw_model, optimizer, scaler, train_loader, dtype)


def forward_backward(
    model: nn.Module,
    loader: CausalLMLoader,
    grad_accum: int,
    ctx: Any,
    scaler: torch.amp.GradScaler | None,
    micro_batch: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Draw grad_accum batches, run each in micro-batches of micro_batch rows (None: whole), accumulating gradients.

    Returns the step's mean loss (a device tensor) and its training FLOPs (the model's batch_flops of the batches'
    shapes: a seq2seq batch is as long as its longest row). Splitting a drawn batch changes the memory a micro-step
    needs, not the data: every micro loss is a token mean over the same number of rows, and the step loss is their
    mean.
    """
    total, flops, raw = torch.zeros((), device=next(model.parameters()).device), 0.0, unwrapped(model)
    for i in range(grad_accum):
        drawn = loader.next_batch()
        flops += raw.batch_flops(drawn)
        micro_batches = _split(drawn, micro_batch)
        for j, batch in enumerate(micro_batches):
            # DDP: all-reduce gradients only on the last micro-step (no_sync on the others)
            last = i == grad_accum - 1 and j == len(micro_batches) - 1
            with dist.gradient_sync(model, last):  # DDP/FSDP: reduce gradients on the last micro-step only
                with ctx:
                    _, loss = model(**batch, **loss_only(model))  # GPT: no (B, T, V) logits in memory
                loss = loss / (grad_accum * len(micro_batches))
                (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
    return total, flops


def _split(batch: dict[str, torch.Tensor], rows: int | None) -> list[dict[str, torch.Tensor]]:
    """A batch as micro-batches of `rows` rows each (views along dim 0); the batch itself when rows is None or more."""
    n = len(next(iter(batch.values())))
    if rows is None or rows >= n:
        return [batch]
    return [{k: v[start : start + rows] for k, v in batch.items()} for start in range(0, n, rows)]


def _init_config(cfg: TrainConfig, source: tuple[nn.Module, Any], tokenizer: Any) -> Any:
    """The architecture of init_from's model; model.dropout applies, and a smaller model.block_size crops it."""
    model, source_tokenizer = source
    if tokenizer.chat_ids is not None and source_tokenizer.chat_ids is None:  # instruct: the chat ids are new
        source_tokenizer = source_tokenizer.with_chat()
    if source_tokenizer.spec() != tokenizer.spec():
        raise ValueError(
            f"init_from={cfg.init_from} uses the {source_tokenizer.name!r} tokenizer but data={cfg.data.name} is "
            f"tokenized with {tokenizer.name!r}; prepare the data with the same tokenizer (data.tokenizer=...)"
        )
    changes: dict[str, Any] = {"dropout": cfg.model.dropout}
    if tokenizer.vocab_size > model.config.vocab_size:  # the chat ids: new embedding rows (_load_source_weights)
        changes["vocab_size"] = tokenizer.vocab_size
    if cfg.model.block_size < model.config.block_size:
        changes["block_size"] = cfg.model.block_size  # fine-tune on shorter windows (learned positions cropped)
    return replace(model.config, **changes)


def _load_source_weights(model: nn.Module, source: nn.Module, name: str) -> None:
    """Copy init_from's weights; learned position embeddings are cropped to a smaller block_size. A vocabulary grown
    by new ids (the chat ids of task=instruct) gives their embedding and output rows the mean of the source's rows,
    as is common practice: a start the softmax neither favours nor ignores."""
    state = source.state_dict()
    old, new = source.config.vocab_size, model.config.vocab_size
    for key, value in model.state_dict().items():
        if key.endswith(("wpe.weight", "embed_positions.weight")) and state[key].shape != value.shape:
            state[key] = state[key][: value.shape[0]]  # (block_size (+ BART's 2), C): the first positions
        elif new > old and key.endswith(("wte.weight", "lm_head.weight")):  # (padded vocabulary, C)
            grown = value.clone()
            rows = min(len(grown), len(state[key]))
            grown[:rows] = state[key][:rows]
            grown[old:new] = state[key][:old].mean(dim=0)
            state[key] = grown
    model.load_state_dict(state)
    print(f"init_from={name}: {model.num_params() / 1e6:.2f}M parameters loaded", flush=True)


def _fit_to_tokenizer(model_cfg: Any, tokenizer: Any) -> Any:
    """Fill model.vocab_size (and T5's decoder start / pad ids) from the tokenizer, or refuse a mismatch."""
    vocab_size = tokenizer.vocab_size
    if model_cfg.vocab_size is None:
        model_cfg = replace(model_cfg, vocab_size=vocab_size)
    elif model_cfg.vocab_size != vocab_size:
        raise ValueError(
            f"vocabulary mismatch: model.vocab_size={model_cfg.vocab_size} but the data's {tokenizer.name} tokenizer "
            f"has {vocab_size} tokens; set model.vocab_size=null (taken from the tokenizer) or change data.tokenizer"
        )
    if model_cfg.kind == "t5":  # end-of-text starts every decoder input and pads encoder inputs
        starts = {k: tokenizer.eot_id for k in ("decoder_start_id", "pad_id") if getattr(model_cfg, k) is None}
        model_cfg = replace(model_cfg, **starts)
    return model_cfg


T5_SENTINELS = 100  # <extra_id_0> .. <extra_id_99>, as in T5


def _check_objective(kind: str, objective: str, layout: str, data_name: str) -> None:
    """The task's objective must suit the model kind and the prepared data (documents or pairs)."""
    if kind not in OBJECTIVES[objective]:
        raise ValueError(
            f"task.objective={objective!r} does not train a {kind} model; use "
            + " or ".join(f"task={o}" for o, trains in OBJECTIVES.items() if kind in trains)
        )
    readers = {"causal": CausalLMLoader, "instruct": InstructLoader, "span_corruption": SpanCorruptionLoader,
               "seq2seq": Seq2SeqLoader}  # fmt: skip
    wanted = readers[objective].layouts()  # what the objective's loader reads
    if layout not in wanted:
        hint = "use a text corpus" if wanted == ("documents",) else "use data=pairs or data=python-docstrings"
        if layout == "conversations":
            hint = "conversations (a .jsonl line's messages) train a gpt with task=instruct"
        raise ValueError(f"task={objective} needs {' or '.join(wanted)} but data={data_name} holds {layout}; {hint}")


def build_loader(
    cfg: TrainConfig,
    data_dir: Path,
    split: str,
    tokenizer: Any,
    model_cfg: Any,
    info: dist.DistInfo,
    device: torch.device,
) -> Any:
    """The batch source of the task's objective: dicts of the model's forward arguments."""
    T = model_cfg.block_size
    start_id = getattr(model_cfg, "decoder_start_id", None)  # T5 trains from the start id it generates from
    common = dict(
        batch_size=cfg.trainer.batch_size,
        seed=cfg.trainer.seed,
        rank=info.rank,
        world_size=info.world_size,
        device=device,
    )
    objective = cfg.task.objective
    if objective == "span_corruption":
        return SpanCorruptionLoader(
            data_dir,
            split,
            input_length=T,
            tokenizer=tokenizer,
            noise_density=cfg.task.noise_density,
            mean_span_length=cfg.task.mean_span_length,
            start_id=start_id,
            **common,
        )
    if objective == "instruct":
        return InstructLoader(data_dir, split, block_size=T, tokenizer=tokenizer, pack=cfg.task.pack, **common)
    if objective == "seq2seq":
        bos_id = getattr(model_cfg, "bos_id", None)  # BART frames inputs and targets with <s>
        return Seq2SeqLoader(
            data_dir,
            split,
            input_length=T,
            target_length=T,
            tokenizer=tokenizer,
            start_id=start_id,
            bos_id=bos_id,
            **common,
        )
    return CausalLMLoader(data_dir, split, block_size=T, **common)


def tokens_per_row(loader: Any, T: int) -> int:
    """Tokens one batch row feeds the model: T (causal), encoder + decoder lengths (T5; at most, for seq2seq)."""
    if isinstance(loader, SpanCorruptionLoader):
        return loader.input_length + loader.target_length
    if isinstance(loader, InstructLoader):  # a GPT row: at most T
        return T
    return 2 * T if isinstance(loader, Seq2SeqLoader) else T


def unscale_and_clip(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, grad_clip: float
) -> torch.Tensor:
    """Unscale (fp16), clip to grad_clip (0: no clipping; the norm is still returned) and return the gradient norm:
    what the loop does between backward and the optimizer step. The norm of FSDP's sharded gradients is the full
    one."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    return grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm


def apply_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """The optimizer step (through the grad scaler with fp16, which skips it on inf gradients), then zero_grad."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of the optimizer's per-parameter state tensors (moments, momentum buffers; not step counters), over
    every optimizer of an Optimizers pair (Muon + AdamW). Exact once a step has created the state."""
    parts = getattr(optimizer, "optimizers", None)
    total = 0
    for opt in parts.values() if parts is not None else [optimizer]:
        for state in opt.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    return total
