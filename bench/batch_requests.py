#!/usr/bin/env python3
"""Write N `ferry batch` requests of mixed lengths (token prompts) to stdout.

usage: bench/batch_requests.py N [--vocab V] [--seed S]
Prompt lengths are uniform in 4..40 tokens and max_new_tokens in 8..24, so the
mean request is 22 prompt and 16 new tokens; ids avoid 0..2 (special tokens).
"""
import argparse
import json
import random

parser = argparse.ArgumentParser()
parser.add_argument("n", type=int)
parser.add_argument("--vocab", type=int, default=32000)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
rng = random.Random(args.seed)
for i in range(args.n):
    prompt = [rng.randrange(3, args.vocab) for _ in range(rng.randint(4, 40))]
    print(json.dumps({"id": i, "tokens": prompt, "max_new_tokens": rng.randint(8, 24)}))
