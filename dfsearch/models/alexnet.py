"""AlexNet (Krizhevsky et al. 2012), torchvision's implementation behind the registry's contract.

torchvision's class plus timm's ``group_matcher`` (stem = the first conv, one group per later conv,
the classifier on top), so that ``freeze_to_top`` and layer-wise decay treat it as any timm model.
``pretrained=True`` loads torchvision's ImageNet weights (``AlexNet_Weights.IMAGENET1K_V1``, tag
``tv_in1k``) from ``$TORCH_HOME/hub/checkpoints``, downloading them there when a network is
reachable; the factory turns a failure into a message that says how to provide them.
"""

from __future__ import annotations

from torchvision.models import AlexNet as _AlexNet
from torchvision.models import AlexNet_Weights

class AlexNet(_AlexNet):
    def __init__(self, num_classes: int = 1, drop_rate: float = 0.5, **_):
        super().__init__(num_classes=num_classes, dropout=drop_rate)
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^features\.0\.", blocks=r"^features\.(\d+)")  # the classifier: the top group

    def pretrained_state_dict(self) -> dict:
        """torchvision's ImageNet weights (the 1000-class head is dropped by the loader: shapes differ)."""
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
