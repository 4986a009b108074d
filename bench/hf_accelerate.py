#!/usr/bin/env python3
"""hf_accelerate.py — the HF Accelerate peer for ferry's streamed decode: a
random-weight LlamaForCausalLM made from a config (Llama-2-7B shape by
default) in fp16, dispatched by accelerate under a GPU memory cap
(max_memory={0: "4GiB", "cpu": "100GiB"}: what does not fit stays in CPU
memory and is moved to the GPU layer by layer on every forward pass, as
`device_map="auto"` does), timed FlexGen's way: a prompt of P tokens per
sequence, N new tokens by greedy decoding, decode tokens/s = batch x (N - 1)
/ decode time (the prefill, which makes the first new token, is timed
apart).

Needs torch, transformers and accelerate; no network (the model comes from
a config, its weights are random).  Prints a table on stderr and one JSON
object per line on stdout (kind = "accelerate_setup" or "accelerate_decode"),
so bench/accelerate_side_by_side.sh can keep them beside ferry's lines.
"""
import argparse
import contextlib
import json
import sys
import time

import torch


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


@contextlib.contextmanager
def skipped_init():
    """Build modules without initialising their weights: nn.Linear and
    nn.Embedding keep torch.empty memory, and transformers' _init_weights
    does nothing (random values are filled in afterwards, much faster)."""
    from transformers import LlamaPreTrainedModel

    saved = [(torch.nn.Linear, "reset_parameters", torch.nn.Linear.reset_parameters),
             (torch.nn.Embedding, "reset_parameters", torch.nn.Embedding.reset_parameters),
             (LlamaPreTrainedModel, "_init_weights", LlamaPreTrainedModel._init_weights)]
    torch.nn.Linear.reset_parameters = lambda self: None
    torch.nn.Embedding.reset_parameters = lambda self: None
    LlamaPreTrainedModel._init_weights = lambda self, module: None
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def fill_random(model, seed, pool_elements=1 << 26):
    """Every matrix from a pool of torch.randn values x 0.02 (fp16, made
    once, copied in chunks at a rotating offset: random enough for timing
    and fast for 6.7 B parameters); every norm weight 1."""
    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(pool_elements, generator=generator) * 0.02).to(torch.float16)
    offset = 0
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.data.view(-1)
            if parameter.dim() == 1:
                flat.fill_(1.0)
                continue
            for start in range(0, flat.numel(), pool_elements // 2):
                count = min(pool_elements // 2, flat.numel() - start)
                offset = (offset + 7919 * 64) % (pool_elements // 2)
                flat[start:start + count].copy_(pool[offset:offset + count])


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False)
    config._attn_implementation = args.attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with skipped_init():
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    fill_random(model, seed=0)
    model.eval()
    return model


def dispatch(model, gpu_mem, cpu_mem):
    """accelerate's placement under the caps, then its hooks: modules on
    "cpu" keep their weights in CPU memory and are copied to GPU 0 for each
    forward pass."""
    from accelerate import dispatch_model, infer_auto_device_map

    max_memory = {0: gpu_mem, "cpu": cpu_mem}
    device_map = infer_auto_device_map(
        model, max_memory=max_memory, no_split_module_classes=["LlamaDecoderLayer"],
        dtype=torch.float16)
    model = dispatch_model(model, device_map=device_map, main_device=0)
    places = {}
    for device in device_map.values():
        places[str(device)] = places.get(str(device), 0) + 1
    return model, device_map, places


def synchronize():
    torch.cuda.synchronize(0)


def run_batch(model, batch, prompt_len, new_tokens, vocab):
    """Prefill (first new token), then new_tokens - 1 greedy decode steps
    with the KV cache; seconds for each part."""
    generator = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=generator).to("cuda:0")
    torch.cuda.reset_peak_memory_stats(0)
    with torch.inference_mode():
        synchronize()
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        synchronize()
        prefill_s = time.perf_counter() - start
        cache = out.past_key_values
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=token.to("cuda:0"), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        synchronize()
        decode_s = time.perf_counter() - start
    del out, cache
    torch.cuda.empty_cache()
    return {
        "kind": "accelerate_decode", "batch": batch, "prompt_len": prompt_len,
        "new_tokens": new_tokens, "prefill_s": prefill_s, "decode_s": decode_s,
        "decode_tok_s": batch * (new_tokens - 1) / decode_s if new_tokens > 1 else 0.0,
        "step_ms": decode_s / max(new_tokens - 1, 1) * 1e3,
        "gpu_peak_gib": torch.cuda.max_memory_allocated(0) / 2**30,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", default="1,16,64", help="batch sizes, comma-separated")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=8,
                        help="new tokens per sequence (the first comes from the prefill)")
    parser.add_argument("--gpu-mem", default="4GiB", help="accelerate's max_memory for GPU 0")
    parser.add_argument("--cpu-mem", default="100GiB", help="accelerate's max_memory for the CPU")
    parser.add_argument("--attn", default="sdpa", help="eager or sdpa")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]

    import accelerate
    import transformers

    start = time.perf_counter()
    model = build_model(args)
    build_s = time.perf_counter() - start
    n_parameters = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    model, device_map, places = dispatch(model, args.gpu_mem, args.cpu_mem)
    dispatch_s = time.perf_counter() - start
    setup = {
        "kind": "accelerate_setup", "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "n_parameters": n_parameters,
        "max_memory": {"0": args.gpu_mem, "cpu": args.cpu_mem}, "modules_per_device": places,
        "attn": args.attn, "build_s": round(build_s, 1), "dispatch_s": round(dispatch_s, 1),
        "gpu_allocated_gib": torch.cuda.memory_allocated(0) / 2**30,
    }
    print(json.dumps(setup), flush=True)
    log(f"accelerate: {n_parameters / 1e9:.2f} B parameters, built in {build_s:.1f} s, "
        f"dispatched in {dispatch_s:.1f} s, modules per device {places}")

    # warm-up: CUDA context, cuBLAS, accelerate's hooks (not reported)
    run_batch(model, 1, 8, 2, args.vocab)

    rows = []
    for batch in batches:
        result = run_batch(model, batch, args.prompt_len, args.new_tokens, args.vocab)
        print(json.dumps(result), flush=True)
        rows.append(result)
    log(f"\nHF Accelerate, max_memory GPU {args.gpu_mem} / CPU {args.cpu_mem}, prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens (decode t/s = batch x "
        f"{args.new_tokens - 1} / decode time)")
    log(f"{'batch':>5} {'prefill s':>10} {'decode s':>10} {'step ms':>10} {'decode t/s':>11} "
        f"{'GPU peak GiB':>13}")
    for r in rows:
        log(f"{r['batch']:>5} {r['prefill_s']:>10.2f} {r['decode_s']:>10.2f} "
            f"{r['step_ms']:>10.1f} {r['decode_tok_s']:>11.2f} {r['gpu_peak_gib']:>13.2f}")


if __name__ == "__main__":
    main()
