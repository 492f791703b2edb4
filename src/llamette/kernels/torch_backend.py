"""The torch backend: the Llama forward pass in PyTorch, with weights kept in their GGUF block layout.

On a CUDA device, a matrix product with few columns (decode) runs a Triton kernel that dequantizes inside the
matrix-vector product, and a prompt batch dequantizes the weight to fp16 tiles for torch.matmul (tensor
cores). Attention is torch's scaled_dot_product_attention over a KV cache kept on the device. Without CUDA
(tests, a machine without a GPU) the same graph runs on the CPU with the weights dequantized once to float32,
so its arithmetic can be checked against the numpy reference.

Optional: needs `pip install llamette[gpu]` (torch, triton).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llamette.cache import check_room, grown_capacity
from llamette.errors import LlametteError
from llamette.gguf.reader import GGUFFile
from llamette.model.config import ModelConfig
from llamette.model.weights import check_tensors

DECODE_COLUMNS = 8  # up to this many columns: the Triton matrix-vector kernel; more: dequantize + matmul


def _torch():
    try:
        import torch
    except ImportError:
        raise LlametteError("the torch backend needs PyTorch: pip install 'llamette[gpu]'") from None
    return torch


class QWeight:
    """A weight matrix (rows, K) in its GGUF type: raw blocks on the device, or dequantized on the CPU."""

    def __init__(self, raw: np.ndarray, wtype: int, rows: int, k: int, device, blocks: bool | None = None) -> None:
        """blocks: keep the GGUF blocks and use the Triton kernels (default: on CUDA only; on the CPU that needs
        TRITON_INTERPRET=1 and is for testing the GPU path)."""
        torch = _torch()
        self.wtype, self.rows, self.k, self.device = int(wtype), rows, k, device
        if blocks if blocks is not None else device.type == "cuda":
            # (rows, row_bytes) uint8; copied, since the file's pages are mapped read-only
            self.blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).to(device)
            self.dense = None
        else:
            from llamette.quant import dequantize

            dense = dequantize(np.ascontiguousarray(raw).reshape(-1), wtype).reshape(rows, k)
            self.dense = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
            self.blocks = None

    def matmul(self, x):
        """x (n, K) float32 -> (n, rows) float32."""
        if self.dense is not None:
            return x @ self.dense.T
        from llamette.kernels import triton_kernels as tk

        if x.shape[0] <= DECODE_COLUMNS:
            return tk.matvec(self.blocks, self.wtype, x, self.k)
        w = tk.dequantize(self.blocks, self.wtype, self.k, out_dtype=_torch().float16)
        return (x.half() @ w.T).float()


class TorchKVCache:
    """K and V for one sequence, each layer's on that layer's device: k[i], v[i] (n_kv_heads, capacity,
    head_dim), grown on demand."""

    def __init__(self, cfg: ModelConfig, n_ctx: int, devices: list, dtypes: list) -> None:
        self.cfg, self.n_ctx, self.devices, self.dtypes = cfg, n_ctx, devices, dtypes
        self.seq_len = 0
        self.tokens: list[int] = []
        self.k: list = []
        self.v: list = []
        self._alloc(0)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(a.element_size() * a.nelement() for a in [*self.k, *self.v])

    def _alloc(self, capacity: int) -> None:
        torch = _torch()
        c = self.cfg
        shape = (c.n_kv_heads, capacity, c.head_dim)
        keep = self.seq_len
        k = [torch.zeros(shape, dtype=t, device=d) for d, t in zip(self.devices, self.dtypes, strict=True)]
        v = [torch.zeros(shape, dtype=t, device=d) for d, t in zip(self.devices, self.dtypes, strict=True)]
        for new, old in zip(k, self.k, strict=False):
            new[:, :keep] = old[:, :keep]
        for new, old in zip(v, self.v, strict=False):
            new[:, :keep] = old[:, :keep]
        self.k, self.v = k, v

    def reserve(self, n: int) -> int:
        check_room(self.seq_len, n, self.n_ctx)
        if self.seq_len + n > self.capacity:
            self._alloc(grown_capacity(self.capacity, self.seq_len + n, self.n_ctx))
        return self.seq_len

    def truncate(self, n: int) -> None:
        self.seq_len = min(self.seq_len, max(0, n))
        del self.tokens[self.seq_len :]

    def clear(self) -> None:
        self.seq_len = 0
        self.tokens = []


class TorchLlama:
    """forward(tokens, cache, all_logits) -> numpy logits, like the other backends."""

    def __init__(
        self,
        cfg: ModelConfig,
        gguf: GGUFFile,
        device: str | None = None,
        n_gpu_layers: int | None = None,
        blocks: bool | None = None,
    ) -> None:
        """device: where offloaded layers run (default: cuda when available, else cpu). n_gpu_layers: the last N
        layers there, the others (and the embedding lookup) on the CPU; None or more than the layers: all,
        with the output layer; as llama.cpp's -ngl."""
        torch = _torch()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LlametteError("--device cuda: no CUDA device is available")
        self.cfg = cfg
        self.blocks = blocks
        n_off = cfg.n_layers + 1 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
        cpu = torch.device("cpu")
        self.layer_devices = [self.device if i >= cfg.n_layers - n_off else cpu for i in range(cfg.n_layers)]
        self.out_device = self.device if n_off > cfg.n_layers else cpu
        self.n_gpu_layers = min(n_off, cfg.n_layers)
        self.kv_dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        present = {spec.name for spec in check_tensors(gguf, cfg)}

        def floats(name: str, dev):
            from llamette.quant import dequantize

            arr = dequantize(gguf.tensor_bytes(name).reshape(-1), gguf.tensors[name].type).astype(np.float32)
            return torch.from_numpy(arr).to(dev)

        def matrix(name: str, dev) -> QWeight:
            info = gguf.tensors[name]
            on = self.blocks if dev == self.device else None  # (CPU-side -ngl layers stay dense)
            return QWeight(gguf.tensor_bytes(name), info.type, info.shape[0], info.shape[1], dev, blocks=on)

        out_name = "output.weight" if "output.weight" in present else "token_embd.weight"
        self.output = matrix(out_name, self.out_device)
        self.output_norm = floats("output_norm.weight", self.out_device)
        self.rope_freqs = floats("rope_freqs.weight", cpu) if "rope_freqs.weight" in present else None
        self.layers = []
        for i, dev in enumerate(self.layer_devices):
            p = f"blk.{i}."
            layer = {n: matrix(f"{p}{n}.weight", dev) for n in
                     ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}  # fmt: skip
            layer["attn_norm"] = floats(p + "attn_norm.weight", dev)
            layer["ffn_norm"] = floats(p + "ffn_norm.weight", dev)
            for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                if f"{p}{n}.bias" in present:
                    layer[n + ".bias"] = floats(f"{p}{n}.bias", dev)
            self.layers.append(layer)
        self._embd_rows = gguf.tensor_bytes("token_embd.weight")  # rows dequantized on lookup
        self._embd_type = gguf.tensors["token_embd.weight"].type

    def new_cache(self, n_ctx: int) -> TorchKVCache:
        torch = _torch()
        dtypes = [self.kv_dtype if d.type == "cuda" else torch.float32 for d in self.layer_devices]
        return TorchKVCache(self.cfg, n_ctx, self.layer_devices, dtypes)

    def _embed(self, tokens: np.ndarray):
        from llamette.quant import dequantize

        torch = _torch()
        rows = dequantize(np.ascontiguousarray(self._embd_rows[tokens]).reshape(-1), self._embd_type)
        return torch.from_numpy(rows.reshape(len(tokens), -1).astype(np.float32)).to(self.layer_devices[0])

    def _rms(self, x, w):
        torch = _torch()
        scale = torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + self.cfg.rms_eps)
        return x * scale * w

    def _rope(self, x, positions):
        """x (T, heads, D): rotate pairs (2i, 2i+1) of the first rope_dims dims (GGUF's permuted Q/K rows)."""
        torch = _torch()
        cfg = self.cfg
        n = cfg.rope_dims
        inv = cfg.rope_base ** (-torch.arange(0, n, 2, dtype=torch.float64, device=x.device) / n)
        if self.rope_freqs is not None:
            inv = inv / self.rope_freqs.to(x.device).double()
        theta = (positions.to(x.device).double() * cfg.rope_freq_scale)[:, None] * inv  # (T, n/2)
        cos, sin = torch.cos(theta).float()[:, None, :], torch.sin(theta).float()[:, None, :]
        x0, x1 = x[..., 0:n:2], x[..., 1:n:2]
        out = x.clone()
        out[..., 0:n:2] = x0 * cos - x1 * sin
        out[..., 1:n:2] = x0 * sin + x1 * cos
        return out

    def forward(self, tokens: Sequence[int], cache: TorchKVCache, all_logits: bool = False) -> np.ndarray:
        torch = _torch()
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(toks) == 0:
            raise LlametteError("forward needs at least one token")
        if toks.min() < 0 or toks.max() >= self.cfg.n_vocab:
            raise LlametteError(f"token id out of range (the model has {self.cfg.n_vocab} tokens)")
        cfg, t = self.cfg, len(toks)
        start = cache.reserve(t)
        with torch.no_grad():
            x = self._embed(toks)  # (T, dim)
            for i, L in enumerate(self.layers):
                dev = self.layer_devices[i]
                x = x.to(dev)  # crossing from the CPU layers to the offloaded ones (-ngl)
                positions = torch.arange(start, start + t, device=dev)
                h = self._rms(x, L["attn_norm"])
                q = self._lin(L, "attn_q", h).view(t, cfg.n_heads, cfg.head_dim)
                k = self._lin(L, "attn_k", h).view(t, cfg.n_kv_heads, cfg.head_dim)
                v = self._lin(L, "attn_v", h).view(t, cfg.n_kv_heads, cfg.head_dim)
                q, k = self._rope(q, positions), self._rope(k, positions)
                cache.k[i][:, start : start + t] = k.transpose(0, 1).to(cache.k[i].dtype)
                cache.v[i][:, start : start + t] = v.transpose(0, 1).to(cache.v[i].dtype)
                keys = cache.k[i][:, : start + t].float()  # (H_kv, S, D)
                vals = cache.v[i][:, : start + t].float()
                rep = cfg.n_heads // cfg.n_kv_heads
                keys, vals = keys.repeat_interleave(rep, 0), vals.repeat_interleave(rep, 0)  # (H, S, D)
                s = start + t
                mask = torch.arange(s, device=dev)[None, :] <= positions[:, None]  # (T, S)
                a = torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(0, 1), keys, vals, attn_mask=mask[None]
                )  # (H, T, D)
                x = x + self._lin(L, "attn_output", a.transpose(0, 1).reshape(t, cfg.q_dim))
                h = self._rms(x, L["ffn_norm"])
                g = torch.nn.functional.silu(self._lin(L, "ffn_gate", h))
                x = x + self._lin(L, "ffn_down", g * self._lin(L, "ffn_up", h))
            if not all_logits:
                x = x[-1:]
            x = x.to(self.out_device)
            logits = self.output.matmul(self._rms(x, self.output_norm))
        cache.seq_len = start + t
        return logits.float().cpu().numpy()

    def decode_batch(self, tokens: Sequence[int], caches: list[TorchKVCache]) -> np.ndarray:
        """One decode step for several sequences (the server's engine): one after another for now."""
        return np.concatenate([self.forward([t], c) for t, c in zip(tokens, caches, strict=True)])

    def _lin(self, layer: dict, name: str, x):
        y = layer[name].matmul(x)
        bias = layer.get(name + ".bias")
        return y if bias is None else y + bias
