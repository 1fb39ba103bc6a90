"""Decoder-only transformer LM: pre-norm blocks, SDPA attention, sizes from tiny to ~1.3B."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..task import Batch, Task


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    d_model: int
    vocab_size: int = 50304
    seq_len: int = 2048

    @property
    def n_params(self) -> int:
        """Parameters (embeddings included, tied head counted once)."""
        per_block = 12 * self.d_model**2 + 13 * self.d_model
        embeddings = self.vocab_size * self.d_model + self.seq_len * self.d_model
        return self.n_layer * per_block + embeddings + 2 * self.d_model  # + final LayerNorm

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the matmuls plus attention scores (PaLM appendix B)."""
        n_matmul = self.n_params - self.seq_len * self.d_model
        return 6 * n_matmul + 12 * self.n_layer * self.d_model * self.seq_len


SIZES = {
    "tiny": GPTConfig(n_layer=2, n_head=2, d_model=64, vocab_size=256, seq_len=64),
    "small": GPTConfig(n_layer=4, n_head=4, d_model=256, vocab_size=256, seq_len=256),
    "125m": GPTConfig(n_layer=12, n_head=12, d_model=768),
    "350m": GPTConfig(n_layer=24, n_head=16, d_model=1024),
    "760m": GPTConfig(n_layer=24, n_head=16, d_model=1536),
    "1.3b": GPTConfig(n_layer=24, n_head=16, d_model=2048),  # head dim 128 (as Pythia-1.4B): faster attention
}


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.out = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):  # GPT-2 residual scaling
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class SyntheticTokens(Dataset):
    """Learnable synthetic sequences: each repeats a random motif, so loss falls as the model learns to
    copy. Sample i is a pure function of (seed, i): identical on every rank and every rerun."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int) -> None:
        self.n, self.seq_len, self.vocab, self.seed = n, seq_len, vocab, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        period = int(torch.randint(2, 17, (1,), generator=g))
        motif = torch.randint(0, self.vocab, (period,), generator=g)
        seq = motif.repeat(self.seq_len // period + 2)[: self.seq_len + 1]
        return seq[:-1], seq[1:]


class TextTokens(Dataset):
    """Byte-level windows over a bundled text (scikit-learn's dataset descriptions: real prose)."""

    def __init__(self, data: torch.Tensor, seq_len: int) -> None:
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i * self.seq_len : (i + 1) * self.seq_len + 1].long()
        return chunk[:-1], chunk[1:]


def bundled_text() -> bytes:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "descr"
    return b"\n".join(p.read_bytes() for p in sorted(folder.glob("*.rst")))


IGNORE = -100
"""A target that is padding, not text (cross_entropy's ignore_index)."""


def _loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), batch[1].flatten(), ignore_index=IGNORE)


def _metrics(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    targets = batch[1]
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=IGNORE)
    counted = (targets != IGNORE).sum(dim=1).clamp(min=1)
    return {"loss": (per_token.view(targets.shape).sum(dim=1) / counted).sum()}


def build(
    size: str = "tiny",
    seq_len: int | None = None,
    vocab_size: int | None = None,
    data: str = "synthetic",
    train_samples: int = 2048,
    val_samples: int = 128,
    data_seed: int = 0,
    files: str | None = None,
    val_files: str | None = None,
    text_column: str = "text",
    seq_len_schedule: list[dict[str, int]] | None = None,
    seqLenSchedule: list[dict[str, int]] | None = None,  # the manifests' spelling
) -> Task:
    """GPT language modelling. `data`: synthetic (learnable motifs), text (bundled, byte-level) or files:
    the `text_column` of the Parquet / JSON-lines files under `files` (a directory or s3:// prefix),
    streamed, byte-level, one sequence per row (cut at seq_len); `val_files` is read into memory.
    `seqLenSchedule` (or seq_len_schedule): sequence-length warm-up, see `SeqLenSchedule`."""
    if size not in SIZES:
        raise ValueError(f"task.args.size must be one of {', '.join(SIZES)}, got {size!r}")
    if data not in ("synthetic", "text", "files"):
        raise ValueError(f"task.args.data must be synthetic, text or files, got {data!r}")
    if (data == "files") != (files is not None):
        raise ValueError("task.args.files names the data of data: files, and only of it")
    base = SIZES[size]
    vocab = 256 if data != "synthetic" else (vocab_size or base.vocab_size)
    cfg = GPTConfig(base.n_layer, base.n_head, base.d_model, vocab, seq_len or base.seq_len)
    train, val = _datasets(cfg, data, train_samples, val_samples, data_seed, files, val_files, text_column)
    schedule = SeqLenSchedule.parse(seqLenSchedule or seq_len_schedule, cfg.seq_len)
    return Task(
        model=lambda: GPT(cfg), train=train, val=val, loss=_loss, metrics=_metrics, curriculum=schedule,
        blocks=lambda m: list(m.blocks), tokens_per_sample=cfg.seq_len,
        flops_per_sample=cfg.flops_per_token() * cfg.seq_len, extra={"config": cfg},
    )


@dataclass(frozen=True)
class SeqLenSchedule:
    """Sequence-length warm-up (a curriculum): optimizer steps before each stage's `untilStep` train on
    the first `seqLen` tokens of every sequence; later steps on the whole seq_len. Short sequences
    early are cheaper and steadier (Li et al., 2022, "The stability-efficiency dilemma"). A function of
    the step alone, so a resumed run trains the same shapes."""

    stages: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, value: list[dict[str, int]] | None, seq_len: int) -> SeqLenSchedule | None:
        if not value:
            return None
        where, stages = "spec.task.args.seqLenSchedule", []
        for i, stage in enumerate(value):
            if not isinstance(stage, dict) or set(stage) != {"untilStep", "seqLen"}:
                raise ValueError(f"{where}[{i}]: give {{untilStep: N, seqLen: L}}, got {stage!r}")
            until, length = stage["untilStep"], stage["seqLen"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (until, length)):
                raise ValueError(f"{where}[{i}]: untilStep and seqLen must be positive integers, got {stage!r}")
            if length > seq_len:
                raise ValueError(f"{where}[{i}].seqLen: {length} is longer than the model's seq_len {seq_len}")
            if stages and (until <= stages[-1][0] or length < stages[-1][1]):
                raise ValueError(f"{where}[{i}]: stages must have growing untilStep and non-decreasing seqLen")
            stages.append((until, length))
        return cls(tuple(stages))

    def length_at(self, step: int) -> int | None:
        """The sequence length of 0-based optimizer step `step` (None: the whole sequence)."""
        return next((length for until, length in self.stages if step < until), None)

    def __call__(self, batch: Batch, step: int) -> Batch:
        length = self.length_at(step)
        if length is None:
            return batch
        inputs, targets = batch
        return inputs[:, :length], targets[:, :length]


def _datasets(cfg: GPTConfig, data: str, train_samples: int, val_samples: int, data_seed: int,
              files: str | None, val_files: str | None, text_column: str) -> tuple[Any, Any]:
    if data == "files":
        from ..shards import ShardedFiles

        def stream(uri: str) -> ShardedFiles:
            return ShardedFiles(uri, columns=[text_column], transform=RowTokens(text_column, cfg.seq_len),
                                seed=data_seed)

        return stream(files or ""), (stream(val_files).read_all() if val_files else None)
    if data == "text":
        tokens = torch.frombuffer(bytearray(bundled_text()), dtype=torch.uint8)
        split = int(len(tokens) * 0.9)
        return TextTokens(tokens[:split], cfg.seq_len), TextTokens(tokens[split:], cfg.seq_len)
    return (SyntheticTokens(train_samples, cfg.seq_len, cfg.vocab_size, data_seed),
            SyntheticTokens(val_samples, cfg.seq_len, cfg.vocab_size, data_seed + 1))


@dataclass(frozen=True)
class RowTokens:
    """A row's text as byte tokens: inputs and next-byte targets, padded to seq_len (padding is not a
    target: IGNORE)."""

    column: str
    seq_len: int

    def __call__(self, row: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        text = row[self.column]
        if not isinstance(text, str):
            raise TypeError(f"column {self.column!r} holds {type(text).__name__}, not text")
        raw = torch.frombuffer(bytearray(text.encode("utf-8")[: self.seq_len + 1] or b"\n"), dtype=torch.uint8).long()
        inputs = torch.zeros(self.seq_len, dtype=torch.long)
        targets = torch.full((self.seq_len,), IGNORE, dtype=torch.long)
        inputs[: len(raw) - 1], targets[: len(raw) - 1] = raw[:-1], raw[1:]
        return inputs, targets
