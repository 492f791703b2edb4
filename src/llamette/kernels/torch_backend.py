"""The torch backend: the Llama forward pass in PyTorch, with weights kept in their GGUF block layout.

On a CUDA device, a matrix product with few columns (decode) runs a Triton kernel that dequantizes inside the
matrix-vector product, and a prompt batch dequantizes the weight to fp16 tiles for torch.matmul (tensor
cores). A prompt attends with torch's scaled_dot_product_attention; a decode step with a Triton kernel that
reads the cache length from device memory, so that the whole step (embedding lookup to argmax) is one CUDA
graph, replayed with a token and a position written into its input buffers. Greedy decoding stays on the
device (`greedy_tokens`): the next step starts from the previous step's argmax before the host has read it.

-ngl N (`n_gpu_layers`): the last N layers run on the device; the first ones run in the native CPU backend
(`NativeLlama` over those layers, its hidden state handed over) when the library is built, else in torch on
the CPU. Without CUDA (tests, a machine without a GPU) the graph runs on the CPU with the weights dequantized
once to float32, so its arithmetic can be checked against the numpy reference; `blocks=True` keeps the GGUF
blocks and the Triton kernels there too (under TRITON_INTERPRET=1), to test the GPU path.

Optional: needs `pip install llamette[gpu]` (torch, triton).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from llamette.cache import check_room, grown_capacity
from llamette.errors import LlametteError
from llamette.gguf.reader import GGUFFile
from llamette.model.config import ModelConfig
from llamette.model.weights import check_tensors

DECODE_COLUMNS = 8  # up to this many columns: the Triton matrix-vector kernel; more: dequantize + matmul
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


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

    @property
    def nbytes(self) -> int:
        t = self.blocks if self.blocks is not None else self.dense
        return t.element_size() * t.nelement()

    def matmul(self, x, force_matvec: bool = False):
        """x (n, K) float32 -> (n, rows) float32. force_matvec: the matrix-vector kernel for any n (each row
        then has the bits it has alone), not fp16 tiles and tensor cores above DECODE_COLUMNS."""
        if self.dense is not None:
            return x @ self.dense.T
        from llamette.kernels import triton_kernels as tk

        if x.shape[0] <= DECODE_COLUMNS or force_matvec:
            return tk.matvec(self.blocks, self.wtype, x, self.k)
        w = tk.dequantize(self.blocks, self.wtype, self.k, out_dtype=_torch().float16)
        return (x.half() @ w.T).float()

    def rows_of(self, ids):
        """Dequantized rows ids (n,) int64 device tensor -> (n, K) float32, on the device (embedding lookup)."""
        if self.dense is not None:
            return self.dense.index_select(0, ids)
        from llamette.kernels import triton_kernels as tk

        return tk.dequantize(self.blocks.index_select(0, ids), self.wtype, self.k, out_dtype=_torch().float32)


class TorchKVCache:
    """K and V for one sequence. Layers on the torch side: k[j], v[j] (n_kv_heads, capacity, head_dim) for
    layer first + j, on that layer's device, grown on demand; the first `first` layers (run by the native CPU
    backend under -ngl) in `native`, a NativeKVCache kept at the same length."""

    def __init__(self, cfg: ModelConfig, n_ctx: int, devices: list, dtypes: list, native=None) -> None:
        self.cfg, self.n_ctx, self.devices, self.dtypes = cfg, n_ctx, devices, dtypes
        self.native = native
        self.first = cfg.n_layers - len(devices)
        self._seq_len = 0
        self.tokens: list[int] = []
        self.k: list = []
        self.v: list = []
        self.decode_graph = None  # the CUDA graph captured over this cache's buffers (TorchLlama)
        self._alloc(0)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @seq_len.setter
    def seq_len(self, n: int) -> None:
        self._seq_len = n
        if self.native is not None:
            self.native.seq_len = n

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1] if self.k else self.native.capacity

    @property
    def nbytes(self) -> int:
        own = sum(a.element_size() * a.nelement() for a in [*self.k, *self.v])
        return own + (self.native.nbytes if self.native is not None else 0)

    def _alloc(self, capacity: int) -> None:
        torch = _torch()
        c = self.cfg
        shape = (c.n_kv_heads, capacity, c.head_dim)
        keep = self._seq_len
        k = [torch.zeros(shape, dtype=t, device=d) for d, t in zip(self.devices, self.dtypes, strict=True)]
        v = [torch.zeros(shape, dtype=t, device=d) for d, t in zip(self.devices, self.dtypes, strict=True)]
        for new, old in zip(k, self.k, strict=False):
            new[:, :keep] = old[:, :keep]
        for new, old in zip(v, self.v, strict=False):
            new[:, :keep] = old[:, :keep]
        self.k, self.v = k, v

    def reserve(self, n: int) -> int:
        """Room for n more positions (the native part's too); returns the first. ContextFullError past n_ctx."""
        check_room(self._seq_len, n, self.n_ctx)
        if self.native is not None:
            self.native.reserve(n)
        if self.k and self._seq_len + n > self.capacity:
            self._alloc(grown_capacity(self.capacity, self._seq_len + n, self.n_ctx))
        return self._seq_len

    def truncate(self, n: int) -> None:
        self.seq_len = min(self._seq_len, max(0, n))
        del self.tokens[self._seq_len :]

    def clear(self) -> None:
        self.seq_len = 0
        self.tokens = []

    def discard(self, p0: int, p1: int, rotate_k) -> None:
        """Remove positions [p0, p1) and move the later ones down (llama.cpp's context shift): their keys are
        turned back by p1 - p0 positions with rotate_k(k (T, heads, D) float32 numpy, delta) -> k."""
        torch = _torch()
        n, end = p1 - p0, self._seq_len
        if self.native is not None:
            self.native.discard(p0, p1, rotate_k)
        for k, v in zip(self.k, self.v, strict=True):
            moved = k[:, p1:end].float().cpu().numpy().transpose(1, 0, 2)  # (T, kv_heads, D)
            turned = torch.from_numpy(np.ascontiguousarray(rotate_k(moved, -n).transpose(1, 0, 2)))
            k[:, p0 : end - n] = turned.to(device=k.device, dtype=k.dtype)
            v[:, p0 : end - n] = v[:, p1:end].clone()
        self._seq_len = end - n
        del self.tokens[p0:p1]

    def snapshot(self) -> dict:
        """A host copy of the filled positions (for save_state)."""
        n = self._seq_len
        return {
            "seq_len": n,
            "tokens": list(self.tokens),
            "k": [a[:, :n].cpu().clone() for a in self.k],
            "v": [a[:, :n].cpu().clone() for a in self.v],
            "native": self.native.snapshot() if self.native is not None else None,
        }

    def restore(self, snap: dict) -> None:
        n = snap["seq_len"]
        self.seq_len = 0
        self.reserve(n)
        for dst, src in zip(self.k, snap["k"], strict=True):
            dst[:, :n] = src.to(dst.device)
        for dst, src in zip(self.v, snap["v"], strict=True):
            dst[:, :n] = src.to(dst.device)
        if self.native is not None:
            self.native.restore(snap["native"])
        self.seq_len = n
        self.tokens = list(snap["tokens"])


class DecodeGraph:
    """One decode step captured as a CUDA graph over one cache's buffers: write `token` and `position`, replay,
    read `logits` (1, n_vocab) and `next_token` (1,) (the argmax) from their static buffers."""

    def __init__(self, net: TorchLlama, cache: TorchKVCache) -> None:
        torch = _torch()
        dev = net.device
        self.key = self.key_of(cache)
        self.token = torch.zeros(1, dtype=torch.int64, device=dev)
        self.position = torch.zeros(1, dtype=torch.int64, device=dev)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = net.decode_step(self.token, self.position, cache)
            self.next_token = self.logits.argmax(dim=-1)

    @staticmethod
    def key_of(cache: TorchKVCache) -> tuple:
        return cache.capacity, tuple(a.data_ptr() for a in cache.k), tuple(a.data_ptr() for a in cache.v)


class TorchLlama:
    """forward(tokens, cache, all_logits) -> numpy logits, like the other backends."""

    def __init__(
        self,
        cfg: ModelConfig,
        gguf: GGUFFile,
        device: str | None = None,
        n_gpu_layers: int | None = None,
        blocks: bool | None = None,
        n_threads: int | None = None,
        native_cpu_layers: bool | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        """device: where offloaded layers run (default: cuda when available, else cpu). n_gpu_layers: the last N
        layers there, the others (and the embedding lookup) on the CPU; None or more than the layers: all,
        with the output layer; as llama.cpp's -ngl. native_cpu_layers: run the CPU layers in the native
        backend (default: when it is built). cuda_graphs: replay decode steps as CUDA graphs (on CUDA)."""
        torch = _torch()
        from llamette.kernels import cpu

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LlametteError("--device cuda: no CUDA device is available")
        if self.device.type == "cuda" and self.device.index is None:  # tensors report cuda:N: compare alike
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cfg = cfg
        self.blocks = blocks
        n_off = cfg.n_layers + 1 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
        self.n_gpu_layers = min(n_off, cfg.n_layers)
        n_cpu = cfg.n_layers - self.n_gpu_layers
        cpu_dev = torch.device("cpu")
        self.out_device = self.device if n_off > cfg.n_layers else cpu_dev
        if native_cpu_layers is None:
            native_cpu_layers = cpu.available()
        # the CPU part in C: the first n_cpu layers (all, with the output, for -ngl 0)
        self.native = None
        if n_cpu and native_cpu_layers:
            whole = n_cpu == cfg.n_layers
            part = cfg if whole else dataclasses.replace(cfg, n_layers=n_cpu)
            self.native = cpu.NativeLlama(part, gguf, n_threads, with_output=whole)
        self.first = n_cpu if self.native is not None else 0  # the first layer torch runs
        self.layer_devices = [self.device if i >= n_cpu else cpu_dev for i in range(self.first, cfg.n_layers)]
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

        self.rope_freqs = floats("rope_freqs.weight", cpu_dev) if "rope_freqs.weight" in present else None
        self._inv_freq = {}  # device -> rope's inverse frequencies (float64), made before any graph capture
        self.layers = []
        for i, dev in enumerate(self.layer_devices, start=self.first):
            p = f"blk.{i}."
            layer = {n: matrix(f"{p}{n}.weight", dev) for n in PROJECTIONS}
            layer["attn_norm"] = floats(p + "attn_norm.weight", dev)
            layer["ffn_norm"] = floats(p + "ffn_norm.weight", dev)
            for n in PROJECTIONS:
                if f"{p}{n}.bias" in present:
                    layer[n + ".bias"] = floats(f"{p}{n}.bias", dev)
            self.layers.append(layer)
            if dev not in self._inv_freq:
                self._inv_freq[dev] = self._rope_inv_freq(dev)
        self.all_native = not self.layers
        if not self.all_native:
            out_name = "output.weight" if "output.weight" in present else "token_embd.weight"
            self.output = matrix(out_name, self.out_device)
            self.output_norm = floats("output_norm.weight", self.out_device)
        self._embd_rows = gguf.tensor_bytes("token_embd.weight")  # rows dequantized on lookup
        self._embd_type = gguf.tensors["token_embd.weight"].type
        # the whole model on one device, in GGUF blocks: decode steps are device-only (graphs on CUDA)
        on_device = self.first == 0 and bool(self.layers) and self.out_device == self.device
        self.device_decode = on_device and self.layers[0]["attn_q"].blocks is not None
        self.cuda_graphs = cuda_graphs and self.device_decode and self.device.type == "cuda"
        self.device_greedy = self.device_decode  # generate() takes greedy tokens from greedy_tokens
        if self.device_decode:
            info = gguf.tensors["token_embd.weight"]
            tied = out_name == "token_embd.weight"
            self.embedding = self.output if tied else QWeight(self._embd_rows, info.type, info.shape[0],
                                                               info.shape[1], self.device, blocks=True)  # fmt: skip

    @property
    def n_threads(self) -> int:
        return self.native.n_threads if self.native is not None else 1

    def new_cache(self, n_ctx: int) -> TorchKVCache:
        torch = _torch()
        dtypes = [self.kv_dtype if d.type == "cuda" else torch.float32 for d in self.layer_devices]
        native = None
        if self.native is not None:
            native = self.native.new_cache(n_ctx)
        return TorchKVCache(self.cfg, n_ctx, self.layer_devices, dtypes, native)

    # -- pieces ------------------------------------------------------------------------------------------

    def _rope_inv_freq(self, dev):
        torch = _torch()
        n = self.cfg.rope_dims
        inv = self.cfg.rope_base ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)
        if self.rope_freqs is not None:
            inv = inv / self.rope_freqs.double()
        return inv.to(dev)

    def _embed(self, tokens: np.ndarray):
        from llamette.quant import dequantize

        torch = _torch()
        rows = dequantize(np.ascontiguousarray(self._embd_rows[tokens]).reshape(-1), self._embd_type)
        return torch.from_numpy(rows.reshape(len(tokens), -1).astype(np.float32))

    def _rms(self, x, w):
        torch = _torch()
        scale = torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + self.cfg.rms_eps)
        return x * scale * w

    def _rope(self, x, positions):
        """x (T, heads, D), positions (T,) int64 on x's device: rotate pairs (2i, 2i+1) of the first rope_dims
        dims (GGUF's permuted Q/K rows)."""
        torch = _torch()
        n = self.cfg.rope_dims
        theta = (positions.double() * self.cfg.rope_freq_scale)[:, None] * self._inv_freq[x.device]  # (T, n/2)
        cos, sin = torch.cos(theta).float()[:, None, :], torch.sin(theta).float()[:, None, :]
        x0, x1 = x[..., 0:n:2], x[..., 1:n:2]
        out = x.clone()
        out[..., 0:n:2] = x0 * cos - x1 * sin
        out[..., 1:n:2] = x0 * sin + x1 * cos
        return out

    def _lin(self, layer: dict, name: str, x, force_matvec: bool = False):
        y = layer[name].matmul(x, force_matvec)
        bias = layer.get(name + ".bias")
        return y if bias is None else y + bias

    def _qkv(self, L: dict, x, positions, force_matvec: bool = False):
        """Attention norm, projections and rope: q (T, H, D), k and v (T, H_kv, D)."""
        cfg, t, mv = self.cfg, x.shape[0], force_matvec
        h = self._rms(x, L["attn_norm"])
        q = self._lin(L, "attn_q", h, mv).view(t, cfg.n_heads, cfg.head_dim)
        k = self._lin(L, "attn_k", h, mv).view(t, cfg.n_kv_heads, cfg.head_dim)
        v = self._lin(L, "attn_v", h, mv).view(t, cfg.n_kv_heads, cfg.head_dim)
        return self._rope(q, positions), self._rope(k, positions), v

    def _finish_layer(self, L: dict, x, attn, force_matvec: bool = False):
        """attn (T, q_dim): output projection, residual, and the feed-forward block."""
        torch = _torch()
        mv = force_matvec
        x = x + self._lin(L, "attn_output", attn, mv)
        h = self._rms(x, L["ffn_norm"])
        g = torch.nn.functional.silu(self._lin(L, "ffn_gate", h, mv))
        return x + self._lin(L, "ffn_down", g * self._lin(L, "ffn_up", h, mv), mv)

    # -- the forward pass ----------------------------------------------------------------------------------

    def _check(self, tokens: Sequence[int]) -> np.ndarray:
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(toks) == 0:
            raise LlametteError("forward needs at least one token")
        if toks.min() < 0 or toks.max() >= self.cfg.n_vocab:
            raise LlametteError(f"token id out of range (the model has {self.cfg.n_vocab} tokens)")
        return toks

    def forward(
        self, tokens: Sequence[int], cache: TorchKVCache, all_logits: bool = False, hidden: bool = False
    ) -> np.ndarray:
        """Run tokens after what the cache holds; logits (T, n_vocab) if all_logits else (1, n_vocab).
        hidden: the final-normed hidden states (T, dim) instead (embeddings)."""
        toks = self._check(tokens)
        if self.all_native:  # -ngl 0 with the native backend: the whole model there
            logits = self.native.forward(toks, cache.native, all_logits, hidden=hidden)
            cache.seq_len = cache.native.seq_len
            return logits
        if len(toks) == 1 and self.device_decode and not hidden:
            start = cache.reserve(1)
            logits, _ = self._device_step(int(toks[0]), start, cache)
            cache.seq_len = start + 1
            return logits.float().cpu().numpy()
        torch = _torch()
        cfg, t = self.cfg, len(toks)
        start = cache.reserve(t)
        with torch.no_grad():
            if self.native is not None:  # the first layers in C; their hidden state goes on from here
                x = torch.from_numpy(self.native.forward(toks, cache.native, residual=True))
            else:
                x = self._embed(toks)  # (T, dim)
            for j, L in enumerate(self.layers):
                dev = self.layer_devices[j]
                x = x.to(dev)  # crossing from the CPU layers to the offloaded ones (-ngl)
                positions = torch.arange(start, start + t, device=dev)
                q, k, v = self._qkv(L, x, positions)
                cache.k[j][:, start : start + t] = k.transpose(0, 1).to(cache.k[j].dtype)
                cache.v[j][:, start : start + t] = v.transpose(0, 1).to(cache.v[j].dtype)
                keys = cache.k[j][:, : start + t].float()  # (H_kv, S, D)
                vals = cache.v[j][:, : start + t].float()
                rep = cfg.n_heads // cfg.n_kv_heads
                keys, vals = keys.repeat_interleave(rep, 0), vals.repeat_interleave(rep, 0)  # (H, S, D)
                s = start + t
                mask = torch.arange(s, device=dev)[None, :] <= positions[:, None]  # (T, S)
                a = torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(0, 1), keys, vals, attn_mask=mask[None]
                )  # (H, T, D)
                x = self._finish_layer(L, x, a.transpose(0, 1).reshape(t, cfg.q_dim))
            if not all_logits and not hidden:
                x = x[-1:]
            x = self._rms(x.to(self.out_device), self.output_norm)
            out = x if hidden else self.output.matmul(x)
        cache.seq_len = start + t
        return out.float().cpu().numpy()

    def decode_step(self, tokens, positions, caches: TorchKVCache | list[TorchKVCache]):
        """Decode steps from device tensors tokens (n,) and positions (n,) int64, token i in caches[i] (the
        whole model on one device, weights in blocks): no host sync and the same shapes at every step, so one
        sequence's step can be captured as a CUDA graph. Writes K/V at the positions; returns logits
        (n, n_vocab) float32 on the device. Every product is the matrix-vector kernel, which reads the weights
        once per 8 sequences and computes each row as it would alone."""
        torch = _torch()
        cfg = self.cfg
        from llamette.kernels.triton_attention import decode_attention

        caches = [caches] if isinstance(caches, TorchKVCache) else caches
        n = len(caches)
        lengths = positions + 1
        scale = 1.0 / float(np.sqrt(np.float32(cfg.head_dim)))
        with torch.no_grad():
            x = self.embedding.rows_of(tokens)  # (n, dim)
            for j, L in enumerate(self.layers):
                q, k, v = self._qkv(L, x, positions, force_matvec=True)
                att = []
                for i, c in enumerate(caches):
                    at = positions[i : i + 1]
                    c.k[j].index_copy_(1, at, k[i : i + 1].transpose(0, 1).to(c.k[j].dtype))
                    c.v[j].index_copy_(1, at, v[i : i + 1].transpose(0, 1).to(c.v[j].dtype))
                    att.append(decode_attention(q[i], c.k[j], c.v[j], lengths[i : i + 1], scale))  # (H, D)
                a = att[0].reshape(1, cfg.q_dim) if n == 1 else torch.stack(att).reshape(n, cfg.q_dim)
                x = self._finish_layer(L, x, a, force_matvec=True)
            return self.output.matmul(self._rms(x, self.output_norm), force_matvec=True)

    def _device_step(self, token, start: int, cache: TorchKVCache):
        """Decode token (an int, or a (1,) device tensor) at position start (reserved): (logits, next_token)
        device tensors, through the cache's CUDA graph where graphs are on."""
        torch = _torch()
        if not self.cuda_graphs:
            logits = self.decode_step(self._token_tensor(token), torch.tensor([start], device=self.device), cache)
            return logits, logits.argmax(dim=-1)
        g = cache.decode_graph
        if g is None or g.key != DecodeGraph.key_of(cache):
            g = cache.decode_graph = self._capture(cache, token, start)
        if isinstance(token, int):
            g.token.fill_(token)
        else:
            g.token.copy_(token)
        g.position.fill_(start)
        g.graph.replay()
        return g.logits, g.next_token

    def _token_tensor(self, token):
        """token: an int, or a (1,) device tensor (a previous step's argmax, used as it is)."""
        return _torch().tensor([token], device=self.device) if isinstance(token, int) else token

    def _capture(self, cache: TorchKVCache, token, start: int) -> DecodeGraph:
        """Warm up (Triton compiles on a first launch) with the real step, then capture. The warm-up writes
        the K/V the replay will write again."""
        torch = _torch()
        cache.decode_graph = None  # the old graph's memory pool is freed before the new capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.decode_step(self._token_tensor(token), torch.tensor([start], device=self.device), cache)
        torch.cuda.current_stream().wait_stream(side)
        return DecodeGraph(self, cache)

    def greedy_tokens(self, token: int, cache: TorchKVCache) -> Iterator[int]:
        """Greedy decoding on the device: feed token, then each step's argmax; yields the argmax of every step.
        Step i + 1 is launched from step i's argmax on the device before the host reads it, so the GPU never
        waits for the host; when the consumer stops, that step ahead is taken back out of the cache.
        Stops when the context is full. Needs device_decode."""
        torch = _torch()
        if not self.device_decode:
            raise LlametteError("greedy_tokens needs the whole model on the device in GGUF blocks")
        on_cuda = self.device.type == "cuda"
        ahead: deque = deque()  # (host buffer, event) of steps launched but not yet read (at most 2)
        if on_cuda:  # pinned buffers, so the copies of the argmax to the host are asynchronous
            ring = [torch.empty(1, dtype=torch.int64, pin_memory=True) for _ in range(3)]
        consumed = cache.seq_len  # the cache length that the tokens handed out so far account for
        feed = token
        try:
            while True:
                if cache.seq_len < cache.n_ctx:
                    start = cache.reserve(1)
                    _, nxt = self._device_step(feed, start, cache)
                    cache.seq_len = start + 1
                    if on_cuda:
                        host = ring[start % len(ring)]
                        host.copy_(nxt, non_blocking=True)
                        done = torch.cuda.Event()
                        done.record()
                        ahead.append((host, done))
                        feed = nxt.clone()  # the graph's buffer is overwritten by the next replay
                    else:
                        ahead.append((nxt.clone(), None))
                        feed = nxt
                elif not ahead:
                    return
                if len(ahead) > 1 or cache.seq_len >= cache.n_ctx:
                    host, done = ahead.popleft()
                    if done is not None:
                        done.synchronize()
                    consumed += 1
                    yield int(host[0])
        finally:
            cache.truncate(consumed)

    def decode_batch(self, tokens: Sequence[int], caches: list[TorchKVCache]) -> np.ndarray:
        """One decode step for several sequences (the server's engine): with the model on the device, one
        pass whose products read each weight once per 8 sequences; else one sequence after another."""
        toks = self._check(tokens)
        if len(toks) != len(caches) or len({id(c) for c in caches}) != len(caches):
            raise LlametteError(f"decode_batch needs one token per distinct cache, got {len(toks)} for {len(caches)}")
        if not self.device_decode or len(toks) == 1:
            return np.concatenate([self.forward([t], c) for t, c in zip(toks.tolist(), caches, strict=True)])
        torch = _torch()
        starts = [c.reserve(1) for c in caches]
        dev = self.device
        logits = self.decode_step(torch.from_numpy(toks).to(dev), torch.tensor(starts, device=dev), caches)
        for c, p in zip(caches, starts, strict=True):
            c.seq_len = p + 1
        return logits.cpu().numpy()
