#!/usr/bin/env python3
"""hf_decode.py — the HF transformers peer for `ferry bench`: a random-weight
LlamaForCausalLM made from a config (Llama-2-7B shape by default), fp16 on
the GPU, eager attention, timed on the same shapes ferry bench uses (prompt
of P tokens per sequence, then G greedy decode steps, batch B).  Also
measures the two ceilings of this GPU in the same process: a device-to-device
copy (bytes read + written) and a bf16 cuBLAS GEMM (torch.matmul).

Prints one JSON object per line (kind = "ceiling" or "hf_decode") so
bench/gpu_run.sh can keep them with ferry bench's own lines.
"""
import argparse
import json
import time

import torch


def ceilings(device):
    """Device-to-device copy GB/s and bf16 GEMM TFLOP/s, events, median of 10."""
    n_bytes = 1 << 30
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), repeats=10)
    size = 8192
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    gemm_ms = time_ms(lambda: torch.matmul(a, b), repeats=10)
    # the prefill GEMM shape of a 7B layer: 2048 tokens x 4096 -> 11008
    x = torch.randn(2048, 4096, dtype=torch.bfloat16, device=device)
    w = torch.randn(11008, 4096, dtype=torch.bfloat16, device=device)
    prefill_ms = time_ms(lambda: torch.matmul(x, w.t()), repeats=20)
    print(json.dumps({
        "kind": "ceiling",
        "device": torch.cuda.get_device_name(device),
        "copy_d2d_gbps": 2 * n_bytes / (copy_ms * 1e-3) / 1e9,
        "gemm_bf16_8192_tflops": 2 * size**3 / (gemm_ms * 1e-3) / 1e12,
        "gemm_bf16_2048x4096x11008_tflops": 2 * 2048 * 4096 * 11008 / (prefill_ms * 1e-3) / 1e12,
    }), flush=True)
    del src, dst, a, b, x, w
    torch.cuda.empty_cache()


def time_ms(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def build_model(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False)
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    model.eval()
    return model


def run_batch(model, batch, prompt_len, gen_len, vocab, device):
    generator = torch.Generator(device="cpu").manual_seed(batch)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=generator).to(device)
    with torch.inference_mode():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        torch.cuda.synchronize()
        prefill_s = time.perf_counter() - t0
        cache = out.past_key_values
        token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        # the first decode step is a warm-up (allocator growth), not timed
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(gen_len):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        decode_s = time.perf_counter() - t0
    return {
        "kind": "hf_decode", "attn": model.config._attn_implementation, "batch": batch,
        "prompt_len": prompt_len, "gen_len": gen_len,
        "prefill_tok_s": batch * prompt_len / prefill_s,
        "decode_tok_s": batch * gen_len / decode_s,
        "step_ms": decode_s / gen_len * 1e3,
        "gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--attn", default="eager", help="eager or sdpa")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--no-ceilings", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    if not args.no_ceilings:
        ceilings(device)
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    for batch in [int(b) for b in args.batch.split(",")]:
        result = run_batch(model, batch, args.prompt_len, args.gen_len, args.vocab, device)
        result["n_parameters"] = n_params
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
