#!/usr/bin/env python3
"""The PyTorch peer of bench_model: Hugging Face's MambaForCausalLM / Mamba2ForCausalLM on CPU.

Not part of coil or its tests; run it by hand from a virtual environment outside the repository:

    python3 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install torch transformers safetensors
    /work/peer-venv/bin/python bench/peer_hf_mamba.py [train|generate] [--config NAME]...
        [--threads N] [--reps N] [--L N]

Models are built from the same configs as bench_model (random init, f32, eager CPU path: without
the mamba_ssm / causal_conv1d CUDA kernels Hugging Face runs Mamba-1 as a Python loop over the
tokens, and Mamba-2 as its chunked torch_forward). Lines use bench_model's format with
impl=pytorch:

  bench=train     forward with labels (the model's shifted cross-entropy), backward,
                  clip_grad_norm_(1.0), torch.optim.AdamW step (betas 0.9/0.95, weight decay 0.1)
  bench=generate  model.generate(greedy, use_cache, min_new_tokens = max_new_tokens) after a
                  16-token prompt; tokens_per_s counts decoding steps only: 32 / (time with 33
                  new tokens - time with 1 new token, i.e. the prefill and first pick); e2e counts
                  all 33 over the whole call.
"""
import argparse
import resource
import statistics
import sys
import time

import torch
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM


def make_config(name):
    if name == "mamba-130m":
        return MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16,
                           expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                           tie_word_embeddings=True), 1, 1024
    if name == "mamba2-130m":
        return Mamba2Config(vocab_size=50280, hidden_size=768, num_hidden_layers=24,
                            state_size=128, num_heads=24, head_dim=64, n_groups=1, chunk_size=256,
                            expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                            tie_word_embeddings=True), 1, 1024
    if name == "demo-mamba":  # examples/train_lm.cpp's demo model
        return MambaConfig(vocab_size=256, hidden_size=256, num_hidden_layers=4, state_size=16,
                           expand=2, conv_kernel=4, tie_word_embeddings=True), 8, 256
    if name == "demo-mamba2":
        return Mamba2Config(vocab_size=256, hidden_size=256, num_hidden_layers=4, state_size=64,
                            num_heads=8, head_dim=64, n_groups=1, chunk_size=64, expand=2,
                            conv_kernel=4, tie_word_embeddings=True), 8, 256
    sys.exit(f"peer_hf_mamba: unknown config {name!r}")


def build(name):
    cfg, batch, L = make_config(name)
    torch.manual_seed(0)
    cls = Mamba2ForCausalLM if isinstance(cfg, Mamba2Config) else MambaForCausalLM
    return cls(cfg).float(), cfg, batch, L


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_train(name, threads, reps, L_override):
    model, cfg, batch, L = build(name)
    if L_override:
        L = L_override
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    params = list(model.parameters())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch, L), generator=g)
    losses = []

    def step():
        out = model(input_ids=ids, labels=ids)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(out.loss.item())

    for t in threads:
        torch.set_num_threads(t)
        t0 = time.perf_counter()
        step()  # warm-up: optimizer state, allocator
        warm_ms = (time.perf_counter() - t0) * 1e3
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(times)
        print(f"bench=train impl=pytorch config={name} L={L} batch={batch} threads={t} reps={reps} "
              f"median_ms={ms:.1f} tokens_per_s={batch * L * 1e3 / ms:.2f} warmup_ms={warm_ms:.1f} "
              f"times_ms={','.join(f'{x:.0f}' for x in times)} max_rss_mb={max_rss_mb():.0f} "
              f"loss={losses[-1]:.3f}", flush=True)


def bench_generate(name, threads, reps, prompt_len=16, new_tokens=32):
    model, cfg, _, _ = build(name)
    model.eval()
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=g)

    def gen(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 use_cache=True, pad_token_id=0, eos_token_id=None)
        assert out.shape[1] == prompt_len + n, out.shape
        return (time.perf_counter() - t0) * 1e3

    for t in threads:
        torch.set_num_threads(t)
        gen(new_tokens + 1)  # warm-up
        gen(1)
        full, first = [], []
        for _ in range(reps):  # alternate, so load falls on both alike
            full.append(gen(new_tokens + 1))
            first.append(gen(1))
        dec_ms = (statistics.median(full) - statistics.median(first)) / new_tokens
        print(f"bench=generate impl=pytorch config={name} batch=1 prompt={prompt_len} threads={t} "
              f"new_tokens={new_tokens} median_ms={dec_ms:.2f} tokens_per_s={1e3 / dec_ms:.2f} "
              f"e2e_tokens_per_s={(new_tokens + 1) * 1e3 / statistics.median(full):.2f} "
              f"generate_ms={statistics.median(full):.1f} prefill_ms={statistics.median(first):.1f}",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", choices=["train", "generate"])
    ap.add_argument("--config", action="append")
    ap.add_argument("--threads", type=int, action="append")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--L", type=int, default=0, help="override the training sequence length")
    a = ap.parse_args()
    threads = a.threads or [1, 2]
    print(f"bench=peer_info impl=pytorch torch={torch.__version__} "
          f"transformers={transformers.__version__} python={sys.version.split()[0]} "
          f"mkldnn={torch.backends.mkldnn.is_available()} "
          f"blas={'mkl' if torch.backends.mkl.is_available() else 'other'}", flush=True)
    if a.mode in (None, "train"):
        for n in a.config or ["demo-mamba", "demo-mamba2", "mamba-130m", "mamba2-130m"]:
            bench_train(n, threads, a.reps or (2 if "130m" in n else 5), a.L)
    if a.mode in (None, "generate"):
        for n in a.config or ["mamba-130m", "mamba2-130m"]:
            bench_generate(n, threads, a.reps or 3)


if __name__ == "__main__":
    main()
