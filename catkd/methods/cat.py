"""Class attention transfer (paper Section 3.2) and CAT-KD (Section 3.3, Eq. 6).

Both models are converted once (``catkd.cam.convert``, Figure 1) so that the student's forward
pass yields its CAMs; the teacher's CAMs come from its converted forward without autograd.

The student has no classifier bias, as in the authors' code (their converted student's
classifier is a 1x1 conv with ``bias=False``): its logits are GAP(CAM) alone (Eq. 3-4). Its
bias, if its model has one, is zeroed and frozen rather than removed, so that the saved student
keeps its model's layout and its plain forward gives the same logits. The teacher keeps its
bias, which only its logits use: the CAMs and the class ranking of ``classes`` are bias-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.cam import CAMModel, convert
from catkd.gradcam import GradCAMModel, grad_cam_from_cams
from catkd.losses import cat_loss
from catkd.methods.base import AT_LEAST_ONE, NON_NEGATIVE, Method


TEACHER_MAPS = ("cam", "gradcam")


class CAT(Method):
    """Label-free class attention transfer: ``beta`` * L_CAT(student CAMs, teacher CAMs) alone.

    Neither the labels nor any logits reach the loss: the student learns from the teacher's
    CAMs only (the paper's setting for Section 4.2). ``resolution``, ``normalize``,
    ``binarize`` and ``classes`` are those of ``catkd.losses.cat_loss``; ``teacher_maps``
    "gradcam" transfers the teacher's Grad-CAM maps instead of its CAMs (Appendix A.4). Term:
    ``cat``.

    Grad-CAM maps need no GAP + Linear head: for a teacher ``convert`` refuses (ConvNeXt,
    MobileNetV3, a ViT with a class-token head), "gradcam" takes them by autograd at its last
    feature map (``catkd.gradcam.GradCAMModel``); they are not its logits decomposed, and
    ``classes`` then ranks classes by the maps' means, not by logits. A teacher that converts
    gets the same maps from its CAMs, without a backward pass.
    """

    ranges = {"beta": NON_NEGATIVE, "resolution": AT_LEAST_ONE}
    reads_teacher_forward = True

    student_cam_model: CAMModel
    teacher_cam_model: CAMModel | GradCAMModel
    revision = 2  # 2: the student's classifier bias is zero and frozen

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float = 50.0,
                 resolution: int = 2, normalize: str | None = "l2", binarize: str | None = None,
                 classes: tuple[str, int] | None = None, teacher_maps: str = "cam") -> None:
        super().__init__(student, teacher)
        if teacher_maps not in TEACHER_MAPS:
            raise ValueError(f"unknown teacher_maps {teacher_maps!r}; valid: {TEACHER_MAPS}")
        # Plain attributes (``__dict__``), not submodules: the converted models share every
        # parameter with the registered student and teacher, so registering them would put each
        # weight in the state_dict twice.
        self.__dict__.update(student_cam_model=convert(student),
                             teacher_cam_model=self._teacher_maps_model(teacher, teacher_maps))
        student_bias = self.student_cam_model.classifier.bias
        if student_bias is not None:
            nn.init.zeros_(student_bias)
            student_bias.requires_grad_(False)
        self.beta = beta
        self.resolution = resolution
        self.normalize = normalize
        self.binarize = binarize
        self.classes = classes
        self.teacher_maps = teacher_maps

    @classmethod
    def shares_teacher_forward(cls, settings: dict) -> bool:
        """CAMs come from the teacher's forward; Grad-CAM maps may need its backward."""
        return settings.get("teacher_maps", "cam") == "cam"

    @staticmethod
    def _teacher_maps_model(teacher: nn.Module, teacher_maps: str) -> CAMModel | GradCAMModel:
        """The teacher converted (CAMs); for "gradcam" maps of a head that gives no CAMs, its
        gradient maps (at a layer of one's choice if the teacher comes as a ``GradCAMModel``)."""
        if isinstance(teacher, GradCAMModel) and teacher_maps == "gradcam":
            return teacher
        try:
            return convert(teacher)
        except TypeError:
            if teacher_maps != "gradcam":
                raise
            return GradCAMModel(teacher)

    def logits_and_cat(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) images -> the student's (N, K) logits and the weighted CAT term."""
        logits, student_cams = self.student_cam_model(images)  # CAMs: (N, K, H_s, W_s)
        with torch.no_grad():
            _, teacher_cams = self.teacher_cam_model(images)  # (N, K, H_t, W_t)
            if self.teacher_maps == "gradcam" and isinstance(self.teacher_cam_model, CAMModel):
                teacher_cams = grad_cam_from_cams(teacher_cams)  # equal, without a backward
        transfer = cat_loss(student_cams, teacher_cams, self.resolution, self.normalize,
                            self.binarize, self.classes)
        return logits, self.beta * transfer

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images; labels unused -> (N, K) logits (for accuracy only), {"cat"}."""
        logits, transfer = self.logits_and_cat(images)
        return logits, {"cat": transfer}


class CATKD(CAT):
    """CAT-KD (Eq. 6): ``ce_weight`` * CE + ``beta`` * L_CAT. Terms: ``ce``, ``cat``.

    Defaults are the resnet32x4 -> resnet8x4 setting: beta 15, r 2, no normalisation.
    """

    ranges = {**CAT.ranges, "ce_weight": NON_NEGATIVE}

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 beta: float = 15.0, resolution: int = 2, normalize: str | None = None,
                 binarize: str | None = None, classes: tuple[str, int] | None = None,
                 teacher_maps: str = "cam") -> None:
        super().__init__(student, teacher, beta=beta, resolution=resolution,
                         normalize=normalize, binarize=binarize, classes=classes,
                         teacher_maps=teacher_maps)
        self.ce_weight = ce_weight

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce", "cat"}."""
        logits, transfer = self.logits_and_cat(images)
        return logits, {"ce": self.ce_weight * F.cross_entropy(logits, labels), "cat": transfer}
