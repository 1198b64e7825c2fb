"""Explanations of what a student learned: Grad-CAM, UniCAM, ROAD and perturbed FSS/RS."""

from kdscope.explain.api import explain_student
from kdscope.explain.figures import plot_map_grid, plot_relevance
from kdscope.explain.gradcam import grad_cam
from kdscope.explain.relevance import (
    RELEVANCE_COLUMNS,
    RelevanceResult,
    perturbed_relevance,
    relevance_rows,
)
from kdscope.explain.road import road_impute, road_keep_top, road_remove_top
from kdscope.explain.unicam import UniCAMResult, unicam

__all__ = [
    "RELEVANCE_COLUMNS",
    "RelevanceResult",
    "UniCAMResult",
    "explain_student",
    "grad_cam",
    "perturbed_relevance",
    "relevance_rows",
    "plot_map_grid",
    "plot_relevance",
    "road_impute",
    "road_keep_top",
    "road_remove_top",
    "unicam",
]
