"""The sizes of DistillMOS networks: the official one and the students of ``torchmos
train distill`` (width and depth factors), and the size of a state_dict read from its
tensor shapes."""

from __future__ import annotations

import torch

__all__ = ["CHANNELS", "D_MODEL", "FREQ_OUT", "HEADS", "LAYERS", "size_config", "size_from_state_dict"]

CHANNELS = (64, 64, 128, 256, 256, 256)  # the official CNN's output channels
D_MODEL, HEADS, LAYERS = 200, 8, 7  # the official transformer
FREQ_OUT = 4  # frequency rows left by the CNN (161 -> 4): the head sees channels[-1] * 4 features



def size_config(width: float = 1.0, depth: float = 1.0, layers: int | None = None,
                heads: int = HEADS) -> dict:
    """The size of a DistillMOS network scaled by ``width`` (CNN channels and the
    transformer's d_model) and ``depth`` (transformer layers; ``layers`` sets them
    directly). ``width=1, depth=1`` is the official size. d_model stays a multiple of
    ``heads``.

    >>> size_config()
    {'channels': [64, 64, 128, 256, 256, 256], 'd_model': 200, 'layers': 7, 'heads': 8}
    >>> size_config(0.5, 0.5)
    {'channels': [32, 32, 64, 128, 128, 128], 'd_model': 104, 'layers': 4, 'heads': 8}
    """
    if not (width > 0 and depth > 0):
        raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}.")
    n_layers = max(1, int(depth * LAYERS + 0.5)) if layers is None else int(layers)
    if n_layers < 1 or heads < 1:
        raise ValueError(f"layers and heads must be at least 1, got {n_layers} and {heads}.")
    return {"channels": [max(1, int(c * width + 0.5)) for c in CHANNELS],
            "d_model": heads * max(1, int(D_MODEL / HEADS * width + 0.5)), "layers": n_layers, "heads": heads}


def size_from_state_dict(sd: dict, heads: int | None = None) -> dict:
    """The size (:func:`size_config`'s keys) of the network whose weights ``sd`` holds, read
    from the tensor shapes; the heads are not visible there (``heads`` or 8). Returns ``{}``
    when ``sd`` lacks the keys (the strict load then names what is missing)."""
    convs = [sd.get(f"cnn.cnn.{2 * i}.weight") for i in range(len(CHANNELS))]
    pe = sd.get("transformer_pool_attn.transformer.position_encoding.pe")
    if not all(isinstance(w, torch.Tensor) and w.dim() == 4 for w in convs) or not isinstance(pe, torch.Tensor):
        return {}
    pre = "transformer_pool_attn.transformer.transformer_encoder.layers."
    layers = {int(k[len(pre):].split(".", 1)[0]) for k in sd if k.startswith(pre)}
    return {"channels": [int(w.shape[0]) for w in convs], "d_model": int(pe.shape[-1]),
            "layers": len(layers), "heads": int(heads or HEADS)}
