"""Write a random-weight LLaMA with a big model's shapes, as bf16 safetensors shards, without
ever holding more than one block of it in memory.

The default shapes are Llama-2-7B's (32 blocks, hidden 4096, MLP 11008, 32 heads, vocabulary
32000): 6.74 B parameters, 13.5 GB as bf16, 27 GB as float32, more than this machine's memory.
Each block is its own shard (one block in memory at a time); the tokenizer is a byte-level BPE
of the vocabulary's size trained on Shakespeare (``shakespeare:calib``), so every llmshrink
command (calibration windows, eval, export) runs on it. The weights are N(0, 0.02) as in
LLaMA's initialisation, norms 1; the model is for timing and memory, not for quality.

    python bench/big_model.py --out runs/big/llama2-7b-shaped            # 13.5 GB, ~3 min
    python bench/big_model.py --out runs/big/tiny --layers 2 --hidden 512 --intermediate 1376
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {  # name -> (layers, hidden, intermediate, heads, kv heads, vocabulary)
    "llama2-7b": (32, 4096, 11008, 32, 32, 32000),
    "llama-13b": (40, 5120, 13824, 40, 40, 32000),
    "llama-30b": (60, 6656, 17920, 52, 52, 32000),
    "llama2-70b": (80, 8192, 28672, 64, 8, 32000),
}


def config_dict(layers, hidden, intermediate, heads, kv_heads, vocab) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "use_cache": True,
    }


def block_tensors(i: int, hidden: int, intermediate: int, heads: int, kv_heads: int, gen) -> dict:
    kv = hidden // heads * kv_heads
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden),
              "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}
    p = f"model.layers.{i}."
    out = {f"{p}{n}.weight": randn(s, gen) for n, s in shapes.items()}
    out[f"{p}input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    out[f"{p}post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return out


def randn(shape, gen) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


def write_tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmshrink.data.corpora import load_corpus

    texts = [d.text for d in load_corpus("shakespeare:calib").documents]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", choices=SHAPES, default="llama2-7b")
    for name in ("layers", "hidden", "intermediate", "heads", "kv-heads", "vocab"):
        ap.add_argument(f"--{name}", type=int, help=f"override the shape's {name}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dims = list(SHAPES[args.shape])
    for k, name in enumerate(("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")):
        if getattr(args, name) is not None:
            dims[k] = getattr(args, name)
    layers, hidden, intermediate, heads, kv_heads, vocab = dims
    if args.out.exists():
        print(f"{args.out} exists: remove it or choose another --out", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    n = layers + 1
    weight_map, total = {}, 0

    def shard(k: int, tensors: dict) -> None:
        nonlocal total
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file(tensors, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())

    shard(0, {"model.embed_tokens.weight": randn((vocab, hidden), gen), "lm_head.weight": randn((vocab, hidden), gen),
              "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)})
    for i in range(layers):
        shard(i + 1, block_tensors(i, hidden, intermediate, heads, kv_heads, gen))
        print(f"block {i + 1}/{layers} written ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg = config_dict(layers, hidden, intermediate, heads, kv_heads, vocab)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    write_tokenizer(tmp, vocab)
    os.replace(tmp, args.out)
    params = total // 2
    print(json.dumps({"out": str(args.out), "parameters": params, "bytes": total,
                      "seconds": round(time.perf_counter() - t0, 1), "config": cfg}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
