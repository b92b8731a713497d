#!/usr/bin/env python3
"""The PyTorch peer of bench_cuda's training step (issue 9): Hugging Face's Mamba2ForCausalLM
(mamba2-130m's config, random init) on one GPU, bf16 autocast, AdamW, batch 8 x L 2048 by
default. Without mamba_ssm's kernels transformers runs Mamba-2 through its chunked torch_forward
(Mamba-1 would be a Python loop over the tokens). Not part of coil; needs torch and transformers
(run it where they are installed):

    python3 bench/peer_hf_gpu.py [--batch 8] [--L 2048] [--reps 3]

Prints  bench=cuda_train impl=pytorch model=mamba2-130m batch= L= median_ms= tokens_per_s=
"""
import argparse
import statistics
import time

import torch
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--L", type=int, default=2048)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
cfg = Mamba2Config(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=128,
                   expand=2, head_dim=64, num_heads=24, n_groups=1, chunk_size=256,
                   tie_word_embeddings=True)
torch.manual_seed(0)
model = Mamba2ForCausalLM(cfg).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.L), device="cuda")


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


step()
torch.cuda.synchronize()
times = []
for _ in range(a.reps):
    t0 = time.perf_counter()
    loss = step()
    torch.cuda.synchronize()
    times.append((time.perf_counter() - t0) * 1e3)
ms = statistics.median(times)
print(f"bench=cuda_train impl=pytorch model=mamba2-130m batch={a.batch} L={a.L} autocast=bf16 "
      f"median_ms={ms:.1f} tokens_per_s={a.batch * a.L / ms * 1e3:.0f} loss={loss.item():.3f} "
      f"torch={torch.__version__} transformers={transformers.__version__} "
      f"gpu={torch.cuda.get_device_name()}")
