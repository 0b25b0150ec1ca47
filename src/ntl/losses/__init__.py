"""Number Token Loss.

- `functional`: the NTL variants as pure tensor functions;
- `fused`: ``cross_entropy_with_ntl``, CE + λ·NTL on logits in one pass;
- `linear`: ``linear_cross_entropy_with_ntl``, CE + λ·NTL from hidden states, no logits built;
- `modules`: the ``nn.Module`` forms (`NumberTokenLoss`, `CrossEntropyWithNTL`,
  `LinearCrossEntropyWithNTL`);
- `combined` (the shared output type and set-up) and `kernel` (the row kernel) serve them.
"""

from ntl.losses import functional
from ntl.losses.combined import LossOutput
from ntl.losses.fused import cross_entropy_with_ntl
from ntl.losses.linear import linear_cross_entropy_with_ntl
from ntl.losses.modules import CrossEntropyWithNTL, LinearCrossEntropyWithNTL, NumberTokenLoss

__all__ = [
    "CrossEntropyWithNTL",
    "LinearCrossEntropyWithNTL",
    "LossOutput",
    "NumberTokenLoss",
    "cross_entropy_with_ntl",
    "functional",
    "linear_cross_entropy_with_ntl",
]
