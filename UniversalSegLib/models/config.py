"""Network configuration of Hermes: a frozen, JSON-able description of one network's shape.

A :class:`HermesConfig` fixes everything needed to rebuild a :class:`~UniversalSegLib.models.HermesNet`
with the same parameter names and shapes; checkpoints store it as ``config.to_dict()``.

>>> cfg = preset("small", num_tasks=7, num_modalities=6)
>>> cfg.null_task
7
>>> HermesConfig.from_dict(cfg.to_dict()) == cfg
True
>>> preset("paper", 72, 6).widths
(32, 64, 128, 256, 320)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from UniversalSegLib.errors import CheckpointError

#: Names accepted by :func:`preset`.
PRESETS: tuple[str, ...] = ("paper", "small")

#: Where the five prior-fusion points sit, as indices into ``widths`` (enc 1/4, 1/8, 1/16; dec 1/8, 1/4).
FUSION_LEVELS: tuple[int, ...] = (2, 3, 4, 3, 2)


@dataclass(frozen=True)
class HermesConfig:
    """Shape of a Hermes network (ResUNet backbone with context priors at five scales).

    Attributes:
        num_tasks: task pool rows, excluding the null (padding) token; the null token's index is
            ``num_tasks``.
        num_modalities: modality pool rows.
        widths: channels at full, 1/2, 1/4, 1/8 and 1/16 resolution.
        blocks_per_stage: residual blocks per encoder/decoder stage.
        fusion_blocks: bidirectional attention layers at each fusion point
            (encoder 1/4, 1/8, 1/16; decoder 1/8, 1/4).
        head_dim: channels per attention head (heads = width / head_dim).
        mlp_ratio: hidden-width multiplier of the feed-forward layers in the fusion blocks.
        modality_tokens: tokens per modality in the modality pool.
        in_channels: image channels.
        fused_kernels: task kernels from the fused task tokens (Hermes, image-dependent); ``False``
            takes them from the unfused pool rows while the fusion still updates the features (on
            head and neck CT at a CPU budget: 0.435 vs 0.151 Dice, README "Universal vs task-specific").
    """

    num_tasks: int
    num_modalities: int
    widths: tuple[int, int, int, int, int] = (32, 64, 128, 256, 320)
    blocks_per_stage: int = 2
    fusion_blocks: tuple[int, int, int, int, int] = (2, 2, 4, 2, 2)
    head_dim: int = 32
    mlp_ratio: int = 4
    modality_tokens: int = 10
    in_channels: int = 1
    fused_kernels: bool = True

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable and comparable.
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "fusion_blocks", tuple(self.fusion_blocks))
        for name in ("num_tasks", "num_modalities", "blocks_per_stage", "head_dim", "mlp_ratio",
                     "modality_tokens", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HermesConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.fused_kernels, bool):
            raise ValueError(f"HermesConfig.fused_kernels must be true or false, got {self.fused_kernels!r}")
        if len(self.widths) != 5 or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"HermesConfig.widths must be 5 positive integers (full, 1/2, 1/4, 1/8, 1/16), "
                             f"got {self.widths!r}")
        if len(self.fusion_blocks) != 5 or any(not isinstance(n, int) or n < 0 for n in self.fusion_blocks):
            raise ValueError(f"HermesConfig.fusion_blocks must be 5 non-negative integers "
                             f"(enc 1/4, 1/8, 1/16, dec 1/8, 1/4), got {self.fusion_blocks!r}")
        for level in sorted(set(FUSION_LEVELS)):
            if self.widths[level] % self.head_dim:
                raise ValueError(f"HermesConfig.widths[{level}] = {self.widths[level]} is a fusion width and "
                                 f"must be divisible by head_dim = {self.head_dim}; change the width or "
                                 "head_dim")

    @property
    def null_task(self) -> int:
        """Index of the null (padding) token in the task pool."""
        return self.num_tasks

    @property
    def fusion_widths(self) -> tuple[int, ...]:
        """Channel width at each of the five fusion points."""
        return tuple(self.widths[level] for level in FUSION_LEVELS)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["fusion_blocks"] = list(self.fusion_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HermesConfig:
        """Inverse of :meth:`to_dict`; unknown, missing or invalid entries raise :class:`CheckpointError`."""
        if not isinstance(d, dict):
            raise CheckpointError(f"network config is a {type(d).__name__}, not a dict",
                                  "re-save the checkpoint with save_checkpoint")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"network config has unknown entries {unknown} (known: {sorted(known)})",
                                  "upgrade UniversalSeg if the checkpoint was written by a newer version")
        missing = [name for name in ("num_tasks", "num_modalities") if name not in d]
        if missing:
            raise CheckpointError(f"network config lacks {missing}",
                                  "re-save the checkpoint with save_checkpoint")
        try:
            return cls(**d)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"network config is invalid: {err}",
                                  "re-save the checkpoint with save_checkpoint") from err


def preset(name: str, num_tasks: int, num_modalities: int) -> HermesConfig:
    """Named network size for a given pool size.

    ``"paper"`` is Hermes-R as published (about 61 M parameters for 72 tasks, 6 modalities).
    ``"small"`` (widths 16/32/64/96/96, two blocks per stage, fusion blocks 1/1/2/1/1; about 7.1 M
    parameters) is the CPU-sized shape ``benchmarks/model_presets.py`` picked. The bundled model
    (``weights/universalseg-small.pt``) is not this shape: its recipe (``configs/universalseg-small.yaml``)
    starts from the preset and overrides it to widths 8/16/32/64/128, one block per stage, one fusion
    block at each point and unfused task kernels, 3.1 M parameters for its 17 tasks and 6 modalities.

    >>> preset("small", 7, 6).fusion_blocks
    (1, 1, 2, 1, 1)
    """
    if name == "paper":
        return HermesConfig(num_tasks, num_modalities)
    if name == "small":
        return HermesConfig(num_tasks, num_modalities, widths=(16, 32, 64, 96, 96),
                            fusion_blocks=(1, 1, 2, 1, 1))
    raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
