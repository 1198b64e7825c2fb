import numpy as np
import pytest
import torch
from matplotlib.image import imread

from kdscope.explain.figures import plot_map_grid, plot_relevance


def summary(values):
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "n": 2,
        "per_batch": values,
    }


def relevance(layers):
    return {
        "estimator": "bias-corrected distance correlation R*",
        "batches_used": 2,
        "layers": {
            f"{s}|{b}": {
                "student_layer": s,
                "base_layer": b,
                "gradcam": {k: summary([0.2, 0.3]) for k in ("fss", "rs_student", "rs_base")},
                "unicam": {
                    "fss": summary([0.1, -0.05]),
                    "rs_distilled": summary([0.4, 0.5]),
                    "rs_residual": {"mean": None, "std": None, "n": 0, "per_batch": []},
                },
            }
            for s, b in layers
        },
    }


@pytest.mark.parametrize("channels", [1, 3])
def test_map_grid_is_written_with_a_cell_per_map_and_is_not_blank(tmp_path, channels):
    images = torch.rand(3, channels, 10, 10)
    ramp = torch.linspace(0, 1, 10).expand(3, 10, 10)
    columns = [
        ("layer1\nGrad-CAM base", ramp),
        ("layer1\nUniCAM distilled", torch.zeros(3, 10, 10)),
    ]
    path = plot_map_grid(images, columns, tmp_path / "sub" / "grid.png", ["a", "b", "c"], "title")
    picture = imread(path)
    height, width = picture.shape[:2]
    # 3 rows and 3 columns of 1.2-inch cells at 100 dpi, plus margins.
    assert 3 * 120 < height < 3 * 130 + 150 and 3 * 120 < width < 3 * 130 + 250
    rgb = picture[..., :3]
    assert rgb.std() > 0.1
    # The ramp's overlay spans the colour map: red-dominant and blue-dominant pixels both appear.
    assert ((rgb[..., 0] - rgb[..., 2]) > 0.5).any() and ((rgb[..., 2] - rgb[..., 0]) > 0.5).any()


def test_relevance_chart_handles_missing_scores(tmp_path):
    path = plot_relevance(
        relevance([("layer1", "layer1"), ("layer2", "layer3")]), tmp_path / "rs.png", "t", "teacher"
    )
    picture = imread(path)
    assert picture.shape[0] > 300 and picture[..., :3].std() > 0.05
