"""Architecture presets of the DwiseNeuro encoder family (pure data: no torch import).

`dwiseneuro` is the Sensorium 2023 winner's layout; its core has 3,075,736 parameters at expansion 6
(3,673,404 at 7, preset `dwiseneuro7`) and its cortex 5,402,624. `tiny` and `small` are cut-down
members of the same family sized for CPU decoding (see `neurocine bench encoder`), with the point readout
(see READOUTS) instead of the pooled core + cortex.

Block i of the core maps core_features[i] -> core_features[i + 1] (the last block keeps its width),
so the core's output width is core_features[-1]; spatial_strides[i] is block i's spatial stride.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: How the 36x64 movie frame is laid out at the model input.
FRAME_LAYOUTS: tuple[str, ...] = ("pad64", "native")

#: Readouts (decoder/encoder/readouts.py): "pooled" averages the core over space before the shared cortex (the
#: published DwiseNeuro); "point" keeps the core's feature map and gives every neuron a learned position, read
#: by bilinear interpolation, and its own feature weights; "gaussian" pools the map through a learned blob per
#: neuron (dense: its cost grows with N x map size; models trained with it still load). Why a map readout:
#: with few channels the pooled readout cannot tell 1,000 receptive-field positions apart, so its input
#: gradient carries no picture (measured: reconstruction pixel correlation 0.03 from a pooled `tiny`); the CPU
#: presets use "point", whose exported cost is a gather (`neurocine bench encoder --neurons 8000`).
READOUTS: tuple[str, ...] = ("pooled", "gaussian", "point")
#: Readouts that read the core's map (no cortex).
MAP_READOUTS: tuple[str, ...] = ("gaussian", "point")

#: Recorded movie frame size (height, width) in the Sensorium 2023 data.
MOVIE_FRAME_SIZE: tuple[int, int] = (36, 64)

#: Input planes of the core, in order: the video, then the four behaviour channels in the order of
#: neurocine.streams.session.BEHAVIOUR_CHANNELS (running_speed, pupil_dilation, pupil_x, pupil_y).
INPUT_PLANES: tuple[str, ...] = ("video", "running_speed", "pupil_dilation", "pupil_x", "pupil_y")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Everything that fixes the architecture (weights and data statistics live elsewhere)."""

    name: str
    core_features: tuple[int, ...]
    spatial_strides: tuple[int, ...]
    cortex_features: tuple[int, ...]
    expansion: int = 6
    se_reduce: int = 32
    spatial_kernel: int = 3
    temporal_kernel: int = 5
    stem_stride: int = 1
    groups: int = 2
    softplus_beta: float = 0.07
    drop_rate: float = 0.4
    drop_path_rate: float = 0.1
    frame_layout: str = "pad64"
    frames: int = 16  # frames per model pass: every 2nd frame of a 2*frames window
    stem_kernel: int = 0  # spatial kernel of the stem; 0 = stem_stride (non-overlapping patches)
    squeeze_excite: bool = True
    readout: str = "pooled"  # one of READOUTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "core_features", tuple(int(v) for v in self.core_features))
        object.__setattr__(self, "spatial_strides", tuple(int(v) for v in self.spatial_strides))
        object.__setattr__(self, "cortex_features", tuple(int(v) for v in self.cortex_features))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if not self.core_features or min(self.core_features) < 1:
            raise ValueError(f"preset {self.name!r}: core_features must be positive, got {self.core_features}")
        if len(self.spatial_strides) != len(self.core_features):
            raise ValueError(
                f"preset {self.name!r}: spatial_strides has {len(self.spatial_strides)} entries, "
                f"core_features {len(self.core_features)}; one stride per block is needed"
            )
        if any(s not in (1, 2) for s in self.spatial_strides) or self.stem_stride not in (1, 2, 4):
            raise ValueError(f"preset {self.name!r}: strides must be 1 or 2 (stem 1, 2 or 4)")
        if self.readout not in READOUTS:
            raise ValueError(f"preset {self.name!r}: readout must be one of {READOUTS}, got {self.readout!r}")
        if self.readout == "pooled" and not self.cortex_features:
            raise ValueError(f"preset {self.name!r}: the pooled readout needs cortex_features")
        if self.readout in MAP_READOUTS and self.cortex_features:
            raise ValueError(f"preset {self.name!r}: the {self.readout} readout reads the core's map; no cortex")
        for width in (self.core_features[-1], *self.cortex_features):
            if width % self.groups:
                raise ValueError(f"preset {self.name!r}: width {width} is not divisible by groups={self.groups}")
        if self.frame_layout not in FRAME_LAYOUTS:
            raise ValueError(f"preset {self.name!r}: frame_layout must be one of {FRAME_LAYOUTS}")
        if self.spatial_kernel % 2 == 0 or self.temporal_kernel % 2 == 0:
            raise ValueError(f"preset {self.name!r}: kernels must be odd")
        if self.stem_kernel and (self.stem_kernel < self.stem_stride or self.stem_kernel % 2 == 0):
            raise ValueError(f"preset {self.name!r}: stem_kernel must be 0 or an odd number >= stem_stride")
        if self.frames < 1 or self.expansion < 1 or self.se_reduce < 1:
            raise ValueError(f"preset {self.name!r}: frames, expansion and se_reduce must be >= 1")

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of one input plane."""
        return (64, 64) if self.frame_layout == "pad64" else MOVIE_FRAME_SIZE

    @property
    def window(self) -> int:
        """Movie frames one window covers (the even and the odd half each give `frames`)."""
        return 2 * self.frames

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder config fields {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)


_DWISE_CORE = (64, 64, 64, 64, 128, 128, 128, 256, 256)
_DWISE_STRIDES = (2, 1, 1, 1, 2, 1, 1, 2, 1)

PRESETS: dict[str, EncoderConfig] = {
    "dwiseneuro": EncoderConfig(
        name="dwiseneuro",
        core_features=_DWISE_CORE,
        spatial_strides=_DWISE_STRIDES,
        cortex_features=(1024, 2048, 4096),
        expansion=6,
    ),
    "dwiseneuro7": EncoderConfig(
        name="dwiseneuro7",
        core_features=_DWISE_CORE,
        spatial_strides=_DWISE_STRIDES,
        cortex_features=(1024, 2048, 4096),
        expansion=7,
    ),
    "small": EncoderConfig(
        name="small",
        core_features=(24, 48, 96),
        spatial_strides=(2, 2, 1),
        cortex_features=(),
        readout="point",
        softplus_beta=1.0,
        expansion=3,
        se_reduce=16,
        stem_stride=2,
        stem_kernel=5,
        frame_layout="native",
        drop_path_rate=0.05,
        drop_rate=0.2,
    ),
    "tiny": EncoderConfig(
        name="tiny",
        core_features=(16, 32),
        spatial_strides=(1, 2),
        cortex_features=(),
        readout="point",
        softplus_beta=1.0,
        expansion=2,
        se_reduce=8,
        stem_stride=4,
        stem_kernel=7,
        frame_layout="native",
        drop_path_rate=0.0,
        drop_rate=0.1,
    ),
}


def get_preset(name: str) -> EncoderConfig:
    """The named preset; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown encoder preset {name!r}; known: {', '.join(PRESETS)}") from None
