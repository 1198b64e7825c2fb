"""The Ray executor on a local Ray of 2 CPUs: one task per run, failures captured, and a study
whose table matches the one the local executor produces. Skipped when Ray is not installed."""

from __future__ import annotations

import math

import pytest

ray = pytest.importorskip("ray")

from kdscope.analysis import read_rows  # noqa: E402
from kdscope.study import StudyConfig, run_study  # noqa: E402
from kdscope.study.executors import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_executor_captures_failures(local_ray):
    executor = RayExecutor(cpus_per_task=1)
    outcomes = dict(executor.map(math.sqrt, [(16.0,), (-1.0,)]))
    assert outcomes[0].ok and outcomes[0].value == 4.0
    assert not outcomes[1].ok and "math domain error" in outcomes[1].error


def test_study_on_ray_matches_local(local_ray, tmp_path):
    def config(out: str) -> StudyConfig:
        return StudyConfig.model_validate({
            "name": "tiny-ray",
            "out_dir": str(tmp_path / out),
            "data": {"name": "digits", "train_size": 200, "batch_size": 64},
            "train": {"epochs": 1, "threads": 1},
            "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
            "teacher_seed": 100,
            "seeds": [0],
            "evaluation": {"test_size": 120},
        })  # fmt: skip

    on_ray = run_study(config("ray"), RayExecutor(), log=lambda m: None)
    assert sorted(on_ray.trained) == sorted(["teacher-resnet8-s100", "control-resnet8-s0",
                                             "kd-teacher-resnet8-s100--resnet8-kd-s0"])  # fmt: skip
    local = run_study(config("local"), log=lambda m: None)
    rows = read_rows(on_ray.study_dir / "results.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r, expected in zip(rows, local.rows, strict=True):
        for measure in ("accuracy", "agree_all", "krs", "c"):
            assert r[measure] == pytest.approx(expected[measure], rel=1e-6, abs=1e-9)
