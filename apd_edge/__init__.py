"""apd-edge: distill segmentation teachers into real-time students and ship them to edge GPUs.

Kept free of heavy imports so that ``apd_edge.runtime`` loads without torch.
"""

__version__ = "0.1.0"
