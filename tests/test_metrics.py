"""Both metric protocols: the paper's (official LLM4Seg code) pinned on tiny masks, nnU-Net's from its summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nnunetv2_llm4seg.metrics import case_metrics, paper_case_metrics


def mask(*pixels: tuple[int, int]) -> np.ndarray:
    """A 4x4 binary mask (16 pixels) with the given pixels set."""
    array = np.zeros((4, 4), dtype=np.uint8)
    for row, column in pixels:
        array[row, column] = 1
    return array


LESION = mask((1, 1), (1, 2), (2, 1), (2, 2))  # 4 pixels


def test_partial_overlap():
    prediction = mask((1, 1), (1, 2), (0, 1), (0, 2))  # 2 of 4 lesion pixels, 2 false positives
    values = paper_case_metrics(prediction, LESION)
    assert values["IoU"] == pytest.approx((2 + 1e-5) / (6 + 1e-5), rel=1e-12)
    assert values["SE"] == pytest.approx(2 / (4 + 1e-6), rel=1e-12)
    assert values["PC"] == pytest.approx(2 / (4 + 1e-6), rel=1e-12)
    se = 2 / (4 + 1e-6)
    assert values["F1"] == pytest.approx(2 * se * se / (2 * se + 1e-6), rel=1e-12)  # 0.4999995...
    assert values["F1"] == pytest.approx(0.5, abs=1e-5)


def test_empty_prediction_and_empty_reference_scores_iou_one_and_f1_zero():
    values = paper_case_metrics(mask(), mask())
    assert values["IoU"] == 1.0  # (0 + 1e-5) / (0 + 1e-5)
    assert values["SE"] == 0.0 and values["PC"] == 0.0 and values["F1"] == 0.0


def test_empty_prediction_on_a_lesion():
    values = paper_case_metrics(mask(), LESION)
    assert values["IoU"] == pytest.approx(1e-5 / (4 + 1e-5), rel=1e-12)
    assert values["F1"] == 0.0


def test_false_positives_on_a_lesion_free_image_count_against_an_all_foreground_reference():
    values = paper_case_metrics(mask((0, 0), (3, 3)), mask())  # 2 false positives of 16 pixels
    assert values["IoU"] == pytest.approx(1e-5 / (2 + 1e-5), rel=1e-12)
    se, pc = 2 / (16 + 1e-6), 2 / (2 + 1e-6)  # the official code's GT == max(GT): every pixel is "lesion"
    assert values["SE"] == pytest.approx(se, rel=1e-12) and values["PC"] == pytest.approx(pc, rel=1e-12)
    assert values["F1"] == pytest.approx(2 * se * pc / (se + pc + 1e-6), rel=1e-12)  # 0.2222...
    assert values["F1"] == pytest.approx(2 / 9, abs=1e-5)


def test_probabilities_are_thresholded_at_one_half():
    assert paper_case_metrics(LESION * 0.6, LESION * 0.51)["IoU"] == 1.0
    assert paper_case_metrics(LESION * 0.5, LESION)["F1"] == 0.0


def test_case_metrics_reads_the_summarys_files_for_both_protocols(tmp_path):
    """nnU-Net's Dice/IoU (NaN for empty/empty) next to the paper protocol of the same prediction files."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple

    cases = {"full": (LESION, mask((1, 1), (1, 2), (0, 1), (0, 2))), "blank": (mask(), mask()),
             "missed": (LESION, mask()), "spurious": (mask(), mask((0, 0), (3, 3)))}
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
    for case, (reference, prediction) in cases.items():
        Image.fromarray(reference).save(tmp_path / "ref" / f"{case}.png")
        Image.fromarray(prediction).save(tmp_path / "pred" / f"{case}.png")
    dataset_json = {"labels": {"background": 0, "lesion": 1}, "file_ending": ".png", "channel_names": {"0": "x"}}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json))
    compute_metrics_on_folder_simple(str(tmp_path / "ref"), str(tmp_path / "pred"), [1],
                                     str(tmp_path / "summary.json"), num_processes=1)
    metrics = case_metrics(json.loads((tmp_path / "summary.json").read_text()), dataset_json)
    assert set(metrics) == set(cases)
    assert metrics["full"]["Dice"] == pytest.approx(0.5) and metrics["full"]["IoU"] == pytest.approx(2 / 6)
    assert np.isnan(metrics["blank"]["Dice"]) and metrics["blank"]["paper IoU"] == 1.0
    assert metrics["blank"]["paper F1"] == 0.0
    assert metrics["missed"]["Dice"] == 0.0 and metrics["missed"]["paper F1"] == 0.0
    assert metrics["spurious"]["Dice"] == 0.0 and metrics["spurious"]["paper F1"] == pytest.approx(2 / 9, abs=1e-5)
    for case, (reference, prediction) in cases.items():
        expected = paper_case_metrics(prediction, reference)
        assert metrics[case]["paper IoU"] == expected["IoU"] and metrics[case]["paper F1"] == expected["F1"]


def test_ignore_label_pixels_are_left_out_of_the_paper_protocol(tmp_path):
    reference = LESION.copy()
    reference[3, :] = 2  # ignore band
    prediction = LESION.copy()
    prediction[3, :] = 1  # predicted foreground under the ignore band does not count
    for name, array in (("ref.png", reference), ("pred.png", prediction)):
        Image.fromarray(array).save(tmp_path / name)
    summary = {"metric_per_case": [{"reference_file": str(tmp_path / "ref.png"),
                                    "prediction_file": str(tmp_path / "pred.png"),
                                    "metrics": {"1": {"Dice": 1.0, "IoU": 1.0}}}]}
    dataset_json = {"labels": {"background": 0, "lesion": 1, "ignore": 2}, "file_ending": ".png"}
    metrics = case_metrics(summary, dataset_json)["ref"]
    assert metrics["paper IoU"] == 1.0 and metrics["paper F1"] == pytest.approx(1.0, abs=1e-6)
