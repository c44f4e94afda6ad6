"""Distillation methods behind one interface (``Distiller``), and frozen teachers.

``build_distiller(student, teacher, recipe)`` picks ``none``, ``kd``, ``cwd``, ``apd``, ``skd`` or ``ifvd``
from ``recipe.distill.method``; ``build_teacher(recipe, num_classes)`` builds the frozen teacher.
"""

from .base import DISTILLERS, Distiller, LossOutput, NoDistill, build_distiller
from .apd import APDDistiller
from .cwd import CWDDistiller, channel_wise_loss
from .ifvd import IFVDDistiller, ifv_loss
from .kd import KDDistiller, pixel_kd_loss
from .skd import SKDDistiller, pairwise_loss
from .teacher import HookedTeacher, build_teacher

__all__ = ["DISTILLERS", "Distiller", "LossOutput", "NoDistill", "build_distiller", "APDDistiller",
           "CWDDistiller", "KDDistiller", "channel_wise_loss", "pixel_kd_loss", "HookedTeacher", "build_teacher",
           "IFVDDistiller", "ifv_loss", "SKDDistiller", "pairwise_loss"]
