"""A tiny transformer block whose attention is flashattn.flash_attn_func instead of
F.scaled_dot_product_attention, trained a few steps on the GPU (CPU fallback) to
copy a random token sequence shifted by one. Prints the loss going down.

    python3 python/examples/train_tiny.py [--steps 60]
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import flashattn


class Block(nn.Module):
    def __init__(self, dim=256, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)  # GQA: fewer K/V heads
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, s, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.heads, self.hd)                  # [batch, seqlen, heads, head_dim]
        k, v = self.kv(h).view(b, s, 2, self.kv_heads, self.hd).unbind(2)
        # Before: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        #                                        is_causal=True, enable_gqa=True).transpose(1, 2)
        a = flashattn.flash_attn_func(q, k, v, causal=True)              # no transposes: flash-attn layout
        x = x + self.proj(a.reshape(b, s, -1))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab=128, dim=256, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) the model")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and flashattn.cuda_compiled()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    model = TinyLM().to(device)
    if args.compile:
        model = torch.compile(model, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(args.steps):
        tokens = torch.randint(0, 128, (8, 129), device=device)
        with torch.autocast(device_type=device, dtype=dtype, enabled=cuda):  # bf16 activations on the GPU
            logits = model(tokens[:, :-1])
            # Target: the previous token (attention must look one position back).
            loss = F.cross_entropy(logits.float().reshape(-1, 128), tokens[:, :-1].roll(1, dims=1).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    print(f"{device}: loss {first:.3f} -> {loss.item():.3f}")
    assert loss.item() < first, "the loss should go down"


if __name__ == "__main__":
    main()
