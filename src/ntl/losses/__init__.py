"""Number Token Loss: pure functions (`functional`), modules (`modules`), fused paths (`fused`)."""

from ntl.losses import functional
from ntl.losses.modules import CrossEntropyWithNTL, LossOutput, NumberTokenLoss

__all__ = ["CrossEntropyWithNTL", "LossOutput", "NumberTokenLoss", "functional"]
