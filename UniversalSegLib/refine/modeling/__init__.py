"""LiteMedSAM's three parts, written after segment-anything's ``modeling/`` (same parameter names)."""

from .image_encoder import TinyViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

__all__ = ["TinyViT", "MaskDecoder", "PromptEncoder"]
